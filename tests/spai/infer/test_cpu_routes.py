"""CPU routes by name (backend x precision), picked per CPU; the bf16 torch runner keeps LayerNorm, softmax, the
filter and the statistics fp32; ORT sessions whose memory follows the chunk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spai.errors import ConfigError, ExportError
from spai.infer.cpu import cpu_routes
from spai.infer.routes import resolve_route, runners_for
from spai.infer.runners import CPU_CHUNKS, OrtRunner, TorchRunner
from spai.infer.scorer import Scorer
from spai.model.specs import ENCODER_FILES, PATCH_FEATURES, PATCHES

EPYC = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})  # our build machine: no AMX
XEON_AMX = EPYC | {"amx_bf16", "amx_int8", "amx_tile"}
OLD = frozenset({"avx2"})


def test_routes_are_picked_per_cpu_from_its_features() -> None:
    assert cpu_routes(EPYC)[:2] == [("ort", "int8"), ("torch", "bf16")]
    assert cpu_routes(XEON_AMX)[0] == ("torch", "bf16")
    assert cpu_routes(OLD) == [("ort", "fp32"), ("ort", "int8"), ("torch", "fp32")]  # int8 is tried: the gate decides
    assert resolve_route(None, "int8", OLD) == ("ort", "int8")
    assert resolve_route(None, "bf16", EPYC) == ("torch", "bf16")


@pytest.mark.parametrize(("backend", "precision", "message"), [
    ("ort", "bf16", "no bf16 GEMMs"), ("torch", "int8", "runs through ONNX Runtime"), (None, "fp16", "GPU"),
    ("tensorflow", "fp32", "unknown backend"), (None, "int4", "unknown precision")])
def test_unsupported_routes_are_clear_errors(backend, precision, message) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_route(backend, precision, EPYC)


def test_bf16_without_hardware_support_is_refused_with_the_alternatives() -> None:
    with pytest.raises(ConfigError, match="neither AVX-512 BF16 nor AMX.*ort fp32"):
        resolve_route("torch", "bf16", OLD)


def test_runners_declare_the_measured_chunk_of_their_route(tiny_model, tiny_onnx_dir) -> None:
    route = runners_for("torch", "bf16", model=tiny_model)
    enc, agg = route.encoder, route.aggregator
    assert enc.max_dim(PATCHES) == CPU_CHUNKS[("torch", "bf16")] and enc.precision == "bf16"
    assert agg.max_dim(PATCH_FEATURES) is None
    assert runners_for("ort", "fp32", onnx_dir=tiny_onnx_dir, chunk=3).encoder.max_dim(PATCHES) == 3
    with pytest.raises(ConfigError, match="needs a model"):
        runners_for("torch", "fp32")
    with pytest.raises(ConfigError, match="needs the exported graphs"):
        runners_for("ort", "fp32", model=tiny_model)
    with pytest.raises(ConfigError, match="no bf16 GEMMs"):
        runners_for("ort", "bf16", onnx_dir=tiny_onnx_dir)
    with pytest.raises(ExportError, match="--precision int8"):
        runners_for("ort", "int8", onnx_dir=tiny_onnx_dir / "missing").__enter__()


def test_ort_sessions_release_memory_after_each_run(tiny_onnx_dir) -> None:
    with OrtRunner(tiny_onnx_dir / ENCODER_FILES["fp32"]) as bounded:
        assert not bounded.session.get_session_options().enable_mem_pattern
        assert bounded.run_options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
        assert bounded.max_dim(PATCHES) == CPU_CHUNKS[("ort", "fp32")]
    with OrtRunner(tiny_onnx_dir / ENCODER_FILES["fp32"], bounded_memory=False) as default:
        assert default.session.get_session_options().enable_mem_pattern and default.run_options is None


def test_bf16_runner_runs_gemms_in_bf16_and_keeps_norms_and_statistics_fp32(tiny_model) -> None:
    from spai.model.nn.precision import Bf16Gemms, precision_table

    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    layer_norm_dtypes, linear_dtypes = [], []
    hooks = [m.register_forward_hook(lambda m, i, o: layer_norm_dtypes.append(o.dtype))
             for m in tiny_model.modules() if isinstance(m, torch.nn.LayerNorm)]
    hooks += [m.register_forward_hook(lambda m, i, o: linear_dtypes.append(o.dtype))
              for m in tiny_model.modules() if isinstance(m, torch.nn.Linear)]
    mode = Bf16Gemms(tiny_model)
    try:
        with torch.no_grad(), mode:
            got = tiny_model.encode_patches(x)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        want = tiny_model.encode_patches(x)
    assert set(layer_norm_dtypes) == {torch.float32} and set(linear_dtypes) == {torch.float32}
    assert got.dtype == torch.float32 and 0 < (got - want).abs().max().item() < 0.05  # computed in bf16, close
    table = precision_table(tiny_model, x[:1])
    assert table["bf16_share"] > 0.5 and not any("filter" in name for name in table["bf16_layers"])
    assert any("mlp.c_fc" in name for name in table["bf16_layers"])


def test_every_route_scores_images_close_to_fp32(tiny_model, tiny_onnx_dir, tmp_path) -> None:
    import shutil

    from export.quantize import patch_encoder_int8

    folder = tmp_path / "onnx"
    shutil.copytree(tiny_onnx_dir, folder)
    patch_encoder_int8(folder / ENCODER_FILES["fp32"])
    images = [np.random.default_rng(i).integers(0, 256, (448 + 64 * i, 672, 3), dtype=np.uint8) for i in range(3)]
    want = tiny_model.score(images)
    for backend, precision in (("torch", "bf16"), ("ort", "fp32"), ("ort", "int8")):
        with runners_for(backend, precision, model=tiny_model, onnx_dir=folder) as route:  # emulated bf16 is ok
            assert route.name == f"{backend}-{precision}" and route.precision == precision
            got = np.array([s.probability for s in Scorer.for_route(route).score_images(images)])
        assert np.abs(got - want).max() <= 1e-2, (backend, precision)
    api = tiny_model.score(images, backend="ort", precision="int8", onnx_dir=folder)  # the Python API by name
    assert np.abs(api - want).max() <= 1e-2
    with TorchRunner(tiny_model, "patch_encoder", 2, "bf16") as enc:
        assert enc.name == "torch:patch_encoder:bf16"
    with pytest.raises(ConfigError, match="runs fp32, fp16 or bf16"):
        TorchRunner(tiny_model, "patch_encoder", 2, "int8")
    with pytest.raises(ConfigError, match="fp16 is a GPU precision"):
        TorchRunner(tiny_model, "patch_encoder", 2, "fp16")


def test_bf16_runner_keeps_the_routes_fp32_layers(tiny_model) -> None:
    from spai.model.nn.precision import Bf16Gemms, bf16_fp32_layers

    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))

    def under(mode: Bf16Gemms) -> np.ndarray:
        with torch.no_grad(), mode:
            return tiny_model.encode_patches(x).numpy()

    kept, all_bf16 = under(Bf16Gemms(tiny_model, bf16_fp32_layers(tiny_model))), under(Bf16Gemms(tiny_model))
    assert not np.array_equal(kept, all_bf16)
    with runners_for("torch", "bf16", model=tiny_model) as route:  # the route spai predict and the gate run
        got = route.encoder.infer({PATCHES: x.numpy()})[PATCH_FEATURES]
    np.testing.assert_array_equal(got, kept)
    with TorchRunner(tiny_model, "patch_encoder", 1, "bf16", keep_fp32=()) as everything:
        np.testing.assert_array_equal(everything.infer({PATCHES: x.numpy()})[PATCH_FEATURES], all_bf16)
