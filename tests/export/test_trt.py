"""The CPU-testable parts of export/trt.py: how TensorRT is detected (a stub-only ``tensorrt`` from tensorrt-stubs
is not TensorRT), the device-buffer pool of the runner, the builder-flag decisions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _stub_only_tensorrt(tmp_path: Path) -> Path:
    """What ``pip install --no-deps tensorrt-stubs`` puts in site-packages: ``tensorrt/__init__.pyi`` and no
    module; ``import tensorrt`` then succeeds as an empty namespace package."""
    pkg = tmp_path / "site" / "tensorrt"
    pkg.mkdir(parents=True)
    (pkg / "__init__.pyi").write_text("__version__: str = '10.13.0.35'\nclass Builder: ...\n")
    return pkg.parent


def test_stub_only_tensorrt_is_not_tensorrt(tmp_path):
    site = _stub_only_tensorrt(tmp_path)
    code = ("import export.trt as t, spai.errors as e\n"
            "try:\n    t.import_tensorrt()\nexcept e.ExportError as err:\n    print(err)\n"
            "else:\n    raise SystemExit('import_tensorrt accepted a stub-only namespace package')\n"
            "assert not t.tensorrt_importable()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={"PYTHONPATH": f"{ROOT}:{site}", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:] + r.stdout
    assert "type stubs" in r.stdout


def test_buffer_pool_keeps_one_buffer_when_chunks_alternate_between_the_batch_and_a_remainder():
    """Chunks of the profile's batch and a smaller remainder alternate: the pool must not reallocate (pinned host
    memory is a cudaHostAlloc each time) but hand out views of the largest buffer it has made."""
    import torch

    from export.trt import BufferPool

    pool = BufferPool(lambda shape, dtype: torch.empty(shape, dtype=dtype))
    for _ in range(5):
        small = pool.get("patches", (5, 3, 224, 224), torch.uint8)
        big = pool.get("patches", (64, 3, 224, 224), torch.uint8)
    assert small.shape == (5, 3, 224, 224) and big.shape == (64, 3, 224, 224) and big.is_contiguous()
    assert pool.allocations == 2  # the first small chunk, then the batch; never again
    small = pool.get("patches", (5, 3, 224, 224), torch.uint8)
    small.fill_(7)
    assert small.data_ptr() == big.data_ptr() and int(big[:5].max()) == 7 and pool.allocations == 2
    assert pool.get("patches", (5, 3, 224, 224), torch.float16).dtype == torch.float16 and pool.allocations == 3


def _aligned(shape: tuple[int, ...], dtype) -> object:
    """A tensor whose address is a multiple of 256 bytes (as the CUDA caching allocator's are)."""
    import torch

    n = int(torch.tensor(shape).prod()) * torch.empty(0, dtype=dtype).element_size()
    raw = torch.empty(n + 256, dtype=torch.uint8)
    return raw[(-raw.data_ptr()) % 256:][:n].view(dtype).view(shape)


def test_infer_device_stages_non_contiguous_and_misaligned_inputs_into_the_runners_buffers():
    """Issue 33, finding 4: TensorRT binds input addresses as they are, so a transposed input or a slice whose
    offset breaks the 256-byte alignment setTensorAddress needs is copied into the runner's own (kept, aligned)
    buffers; an aligned contiguous input is bound in place, with no copy."""
    import torch

    from export.trt import BufferPool, needs_staging, staged_inputs

    pool = BufferPool(_aligned)
    base = _aligned((6, 4, 8), torch.float16)
    base.copy_(torch.arange(base.numel(), dtype=torch.float16).view(6, 4, 8))
    inputs = {"aligned": base, "transposed": base.transpose(1, 2), "offset": base[1:]}
    assert [needs_staging(t) for t in inputs.values()] == [False, True, True]  # 1 row = 64 bytes: not aligned
    staged = staged_inputs(inputs, pool)
    assert staged["aligned"].data_ptr() == base.data_ptr() and pool.allocations == 2
    for name in ("transposed", "offset"):
        assert torch.equal(staged[name], inputs[name]) and not needs_staging(staged[name])
        assert staged[name].data_ptr() != base.data_ptr()
    again = staged_inputs(inputs, pool)  # the same buffers next call: nothing allocated per call
    assert again["offset"].data_ptr() == staged["offset"].data_ptr() and pool.allocations == 2


def test_builder_flags_tf32_off_by_default_and_version_compatible_on_request():
    from export.trt import BuildOptions, builder_flag_changes
    from spai.errors import ExportError

    flags_10 = {"FP16", "TF32", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"}
    flags_11 = {"TF32", "VERSION_COMPATIBLE"}  # TensorRT 11 removed FP16/BF16/INT8 (strong typing only)
    for flags in (flags_10, flags_11):
        assert builder_flag_changes(flags, BuildOptions()) == ([], ["TF32"])
        assert builder_flag_changes(flags, BuildOptions(tf32=True, version_compatible=True)) == \
            (["VERSION_COMPATIBLE"], [])
    with pytest.raises(ExportError, match="version-compatible"):
        builder_flag_changes({"TF32"}, BuildOptions(version_compatible=True))


def test_runner_declares_nothing_before_it_is_entered(tmp_path):
    import numpy as np

    from export.trt import TrtRunner, tensorrt_importable
    from spai.errors import ExportError

    runner = TrtRunner(tmp_path / "patch_encoder.plan")
    assert runner.limits == {} and runner.name == "trt:patch_encoder.plan"
    if not tensorrt_importable():
        with pytest.raises(ExportError, match="TensorRT is not installed"):
            runner.__enter__()
    with pytest.raises(RuntimeError, match="context manager"):
        runner._infer({"patches": np.zeros((1, 3, 224, 224), np.uint8)})


@pytest.mark.trt
def test_engines_manifest_runner_and_repository_on_a_gpu(tiny_export, tmp_path):
    """GPU + TensorRT only (skipped here): engine.json records this TensorRT and the profiles; the runner declares
    them, reuses its buffers per shape, agrees between host and device inputs; the repository builds from it."""
    import numpy as np
    import torch

    from export.manifest import read_manifest
    from export.pipeline import engine_profiles, engines_from_onnx
    from export.trt import TrtRunner, tensorrt_available, tensorrt_version
    from serving.repository import build_repository

    assert tensorrt_available()
    _, art = tiny_export
    profiles = engine_profiles(art.graphs.feature_dim, min_batch=1, opt_batch=4, max_batch=8, max_patches=64)
    engines = engines_from_onnx(art, tmp_path, profiles)
    manifest = read_manifest(tmp_path)
    assert manifest.tensorrt_version == tensorrt_version() and manifest.engines["patch_encoder"].max_batch() == 8
    x = np.random.default_rng(0).integers(0, 256, (5, 3, 224, 224), dtype=np.uint8)
    with TrtRunner(engines["patch_encoder"]) as runner:
        assert runner.limits["patches"] == (8, 3, 224, 224) and runner.input_dtype("patches") == np.uint8
        host = [runner.infer({"patches": x})["patch_features"] for _ in range(3)]
        allocations = runner._device.allocations
        runner.infer({"patches": x})
        assert runner._device.allocations == allocations  # once per shape
        device = runner.infer_device({"patches": torch.from_numpy(x).cuda()})["patch_features"].cpu().numpy()
        assert runner.device_memory_bytes > 0
    assert all(np.array_equal(host[0], h) for h in host[1:]) and np.allclose(host[0], device, atol=1e-6)
    root = build_repository(tmp_path, "trt", tmp_path / "repo")
    assert (root / "spai_patch_encoder" / "1" / "model.plan").is_file()
