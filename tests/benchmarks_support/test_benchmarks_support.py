"""The benchmark suite's own correctness: faithful baselines (the original algorithms compute our features), and a
report that renders, names its baselines and refuses ratios from a loaded run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))
SAMPLE_JSON = Path(__file__).with_name("data") / "quick_sample.json"
# spai-tiny with every fusion switch off: an SPAI-style head (upstream's statistics, no semantic pass)
SPAI_STYLE = [("MODEL.FRE.EARLY_FUSION_LAYERS", []), ("MODEL.FRE.USE_ADAPTIVE_GATING", False),
              ("MODEL.FRE.USE_FREQUENCY_AWARE_ATTENTION", False), ("MODEL.FRE.USE_CROSS_ATTENTION", False),
              ("MODEL.FRE.USE_HIERARCHICAL_FUSION", False), ("MODEL.FRE.EXTENDED_STATISTICS", False)]
TINY_MFM = [("MODEL_WEIGHTS", "mfm"), ("MODEL.VIT.EMBED_DIM", 64), ("MODEL.VIT.DEPTH", 2), ("MODEL.VIT.NUM_HEADS", 4),
            ("MODEL.VIT.INTERMEDIATE_LAYERS", [0, 1]), ("MODEL.VIT.PROJECTION_DIM", 32),
            ("MODEL.PATCH_VIT.ATTN_EMBED_DIM", 64), ("MODEL.PATCH_VIT.NUM_HEADS", 4)]


@pytest.fixture(scope="module")
def baseline_module():
    import benchmarks.baseline as baseline

    return baseline


@pytest.fixture(scope="module")
def spai_style_model():
    import spai

    torch.manual_seed(0)
    return spai.create_model("spai-tiny", overrides=SPAI_STYLE)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (448, 672, 3), dtype=np.uint8),  # 2 x 3 grid
            rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)]  # five-crop (and padding on one side)


def _backbone_passes(model, base, x) -> int:
    visual = model.mfvit.vit.clip.visual
    calls = []
    handle = visual.register_forward_hook(lambda *a: calls.append(1))
    try:
        base.encode(x)
    finally:
        handle.remove()
    return len(calls)


@pytest.mark.parametrize("which", ["spai-style", "fusion"])
def test_original_algorithm_computes_our_features_and_logits(which, tiny_model, spai_style_model,
                                                             baseline_module) -> None:
    model = tiny_model if which == "fusion" else spai_style_model
    x = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with baseline_module.original_baseline(model, chunk=2) as base, torch.inference_mode():
        assert isinstance(base, baseline_module.FusionFork if which == "fusion" else baseline_module.UpstreamSpai)
        assert (base.encode(x) - model.encode_patches(x)).abs().max().item() <= 1e-4
        for image in _images():
            assert base.score(image) == pytest.approx(model.score_images([image])[0].logit, abs=1e-4)
        # upstream runs three backbone passes per chunk; the fork adds a full semantic pass
        assert _backbone_passes(model, base, x) == (4 if which == "fusion" else 3)


def test_original_algorithm_on_upstream_mfm_backbone(baseline_module) -> None:
    import spai

    torch.manual_seed(0)
    model = spai.create_model("spai-mfm-b16", overrides=TINY_MFM)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with baseline_module.original_baseline(model, chunk=1) as base, torch.inference_mode():
        assert isinstance(base, baseline_module.UpstreamSpai) and base.visual is None
        assert (base.encode(x) - model.encode_patches(x)).abs().max().item() <= 1e-4


def test_upstream_fft_filter_matches_the_matmul_filter(tiny_model, baseline_module) -> None:
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    low, high = baseline_module.upstream_filter(x, tiny_model.mfvit.frequencies_mask)
    ref_low, ref_high = tiny_model.mfvit.filter(x)
    assert (low - ref_low).abs().max() < 1e-5 and (high - ref_high).abs().max() < 1e-5


def test_original_chunk_defaults_to_the_config_and_close_removes_hooks(tiny_model, baseline_module) -> None:
    blocks = tiny_model.mfvit.vit.clip.visual.transformer.resblocks
    before = sum(len(b.ln_2._forward_hooks) for b in blocks)
    with baseline_module.original_baseline(tiny_model) as base:
        assert base.chunk == tiny_model.cfg.MODEL.FEATURE_EXTRACTION_BATCH
        assert sum(len(b.ln_2._forward_hooks) for b in blocks) == before + len(blocks)
    assert sum(len(b.ln_2._forward_hooks) for b in blocks) == before


def test_report_writes_markdown_and_plots_when_given_quick_run_json(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), str(SAMPLE_JSON), "-o",
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "report.md").read_text()
    for heading in ("## Targets", "## Patch encoder", "## Foundation", "## Cost versus resolution", "## Aggregator",
                    "## CPU routes"):
        assert heading in md
    assert "x baseline" in md and "| baseline |" in md
    assert (tmp_path / "throughput.png").stat().st_size > 0
    assert (tmp_path / "resolution.png").stat().st_size > 0


def _route(contender: str, seconds: float, probe: float, logit: float = 0.5, peak: float = 1000.0,
           mp: float = 1) -> dict:
    backend, _, precision = contender.partition("-")
    original = backend == "original"
    info = {"kind": "route", "model": "spai-b16", "contender": contender, "backend": backend,
            "precision": "fp32" if original else precision, "nominal_mp": mp, "height": 896, "width": 1120,
            "patches": 20, "device": "cpu-2core", "flops_per_patch": 1e11, "logit": logit, "peak_mb": peak,
            "process_peak_mb": peak, "probe_gflops": probe, "probe_gflops_max": probe, "torch_loaded": original,
            "baseline": "upstream SPAI (mever-team/spai): torch.fft filter, 3 backbone passes" if original else None,
            "chunk": 1 if original else None, "auto_route": "ort-int8"}
    return {"group": "g", "name": f"test_cpu_route[{contender}]", "extra_info": info,
            "stats": {"median": seconds, "min": seconds, "mean": seconds, "stddev": 0.0, "rounds": 1}}


def _run_json(path: Path, benchmarks: list[dict]) -> Path:
    doc = json.loads(SAMPLE_JSON.read_text())
    path.write_text(json.dumps({**doc, "benchmarks": benchmarks}))
    return path


def test_report_names_the_baseline_and_refuses_ratios_of_a_loaded_run(tmp_path: Path) -> None:
    from benchmarks.report import write_report

    steady = _run_json(tmp_path / "steady.json", [
        _route("original-1", 20.0, 180), _route("torch-fp32", 16.0, 175), _route("ort-int8", 8.0, 178, logit=0.49,
                                                                                 peak=900)])
    loaded = _run_json(tmp_path / "loaded.json", [
        _route("original-1", 20.0, 180), _route("ort-int8", 4.0, 120)])  # the probe fell 33% below its best
    md = write_report([steady, loaded], tmp_path / "out").read_text()
    assert "upstream SPAI (mever-team/spai)" in md and "1 patch(es) per encoder call" in md
    assert "| 2.5 |" in md  # steady run: 20 s / 8 s
    assert "loaded: matmul probe fell to 120 GFLOP/s (33% below" in md
    assert "refused" in md and "| 5 |" not in md  # no ratio from the loaded run
    assert "spai-b16 (steady): best parity-passing route **ort-int8**: at least **2.50x**" in md
    assert "target >= 2x: met" in md and "spai-b16 (loaded): ratios refused" in md


def test_report_excludes_a_route_that_flips_a_decision_from_the_targets(tmp_path: Path) -> None:
    from benchmarks.report import write_report

    run = _run_json(tmp_path / "run.json", [_route("original-1", 20.0, 180), _route("torch-fp32", 16.0, 180),
                                            _route("ort-int8", 5.0, 180, logit=-0.1), _route("torch-bf16", 9.0, 180)])
    md = write_report([run], tmp_path / "out").read_text()
    assert "**torch-bf16**: at least **2.22x**" in md  # int8 is faster but flips the decision (0.5 -> -0.1)
