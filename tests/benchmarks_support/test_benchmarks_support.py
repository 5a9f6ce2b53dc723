"""The benchmark suite's own correctness: a fair baseline, and a report that renders from a quick run's JSON."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_JSON = Path(__file__).with_name("data") / "quick_sample.json"


@pytest.fixture(scope="module")
def upstream_baseline():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.baseline import UpstreamBaseline

    return UpstreamBaseline


def test_baseline_matches_encode_patches_when_weights_are_shared(tiny_model, upstream_baseline) -> None:
    base = upstream_baseline(tiny_model)
    x = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode():
            got, want = base(x), tiny_model.encode_patches(x)
    finally:
        base.close()
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-4


def test_baseline_close_removes_its_hooks_when_called(tiny_model, upstream_baseline) -> None:
    blocks = tiny_model.mfvit.vit.clip.visual.transformer.resblocks
    before = sum(len(b.ln_2._forward_hooks) for b in blocks)
    upstream_baseline(tiny_model).close()
    assert sum(len(b.ln_2._forward_hooks) for b in blocks) == before


def test_report_writes_markdown_and_plots_when_given_quick_run_json(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), str(SAMPLE_JSON), "-o",
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "report.md").read_text()
    for heading in ("## Targets", "## Patch encoder", "## Foundation", "## Cost versus resolution", "## Aggregator"):
        assert heading in md
    assert "x baseline" in md and "| baseline |" in md
    assert (tmp_path / "throughput.png").stat().st_size > 0
    assert (tmp_path / "resolution.png").stat().st_size > 0
