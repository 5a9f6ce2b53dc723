"""`spai demo` goes on after a failed parity gate only when the FP16 graph alone failed (the CPU demo serves the
FP32 graphs); any other failure stops it with the report's failures."""

from __future__ import annotations

import json

import pytest

from spai.errors import SPAIError
from spai_cli.demo import _continue_without_fp16


def _report(tmp_path, failures):
    (tmp_path / "export_report.json").write_text(json.dumps({"passed": False, "failures": failures}))
    return tmp_path


def test_only_the_fp16_graph_failing_lets_the_demo_go_on(tmp_path, capsys):
    _continue_without_fp16(_report(tmp_path, ["ort-fp16/images: max |Δp| 0.0112 > 0.01"]))
    assert "build no TensorRT FP16 engine" in capsys.readouterr().out


@pytest.mark.parametrize("failures", [["ort-fp32/images: max |Δp| 2e-05 > 1e-05"],
                                      ["ort-fp16/images: x", "ort-fp32/random: y"], []])
def test_any_other_failure_stops_the_demo(tmp_path, failures):
    with pytest.raises(SPAIError, match="failed its parity gates"):
        _continue_without_fp16(_report(tmp_path, failures))
