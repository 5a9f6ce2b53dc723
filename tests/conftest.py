"""Shared fixtures; markers gpu / trt / triton skip themselves where the hardware or library is absent.

``--record`` (opt-in) lets the reliability tests write their findings to tools/reliability/results and regenerate
docs/reliability.md; without it a test run writes nothing tracked.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = ROOT.parent / "shared" / "data" / "samples"
# tests/helpers.py, tests/restricted_env.py, the reliability tools (the bad-input corpus, the RSS series) and the
# clean-tree guard are imported by name from every test folder.
for _path in (ROOT / "tools", ROOT / "tools" / "reliability", Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import clean_tree  # noqa: E402  (tools/clean_tree.py)
import results_store  # noqa: E402  (tools/reliability/results_store.py)
from helpers import TOOLS_DIR, CliRun  # noqa: E402

_RECORDS: dict[str, list[dict]] = {}  # test node id -> its findings, kept only when the test passed
_PASSED: set[str] = set()

torch.set_num_threads(max(1, os.cpu_count() or 1))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--record", action="store_true", default=False,
                     help="write the reliability findings to tools/reliability/results and regenerate "
                          "docs/reliability.md (off: a test run leaves the tracked files as they were)")


def pytest_configure(config: pytest.Config) -> None:
    clean_tree.register(config, ROOT)  # `make test`: fail a run that wrote tracked files


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _tensorrt() -> bool:
    """A real TensorRT (not the stub-only package tensorrt-stubs leaves in site-packages)."""
    from export.trt import tensorrt_importable

    return tensorrt_importable()


def _skip_reasons() -> dict[str, str | None]:
    return {
        "gpu": None if torch.cuda.is_available() else "no CUDA GPU on this machine",
        "trt": None if _tensorrt() and torch.cuda.is_available() else
        "TensorRT (the `tensorrt` package with a GPU) is not installed here",
        "triton": None if _has("pytriton") and _has("tritonclient") else
        "nvidia-pytriton / tritonclient not installed (pip install '.[serve]')",
    }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = _skip_reasons()
    for item in items:
        for marker, reason in reasons.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Route evidence and auto's exports go to a folder of this session, never to the user's ~/.cache/spai."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPAI_CACHE_DIR", str(tmp_path_factory.mktemp("spai_cache")))
        yield


@pytest.fixture(scope="session")
def tiny_model():
    """A spai-tiny model with random weights (seeded), in eval mode. Do not mutate it."""
    import spai

    torch.manual_seed(0)
    return spai.create_model("spai-tiny")


@pytest.fixture(scope="session")
def tiny_onnx_dir(tiny_model, tmp_path_factory) -> Path:
    """patch_encoder.onnx + aggregator.onnx (with attention) of the seeded spai-tiny model."""
    pytest.importorskip("onnxruntime")
    from export.onnx import onnx_from_torch

    return onnx_from_torch(tiny_model, tmp_path_factory.mktemp("tiny_onnx")).directory


@pytest.fixture(scope="session")
def generated_images(tmp_path_factory) -> list[Path]:
    """The project's own corpus (spai.data.samples): JPEG/PNG/WebP of several sizes, one over 2 MP, non-square,
    16-bit, CMYK, EXIF-rotated, RGBA. Needs nothing outside the project."""
    from spai.data.samples import write_sample_images

    return write_sample_images(tmp_path_factory.mktemp("generated_images"))


@pytest.fixture(scope="session")
def check_images(generated_images) -> list[Path]:
    """What end-to-end checks score: the generated corpus, plus the shared samples where present."""
    from spai.infer.images import list_images

    return [*generated_images, *(list_images(SAMPLES_DIR) if SAMPLES_DIR.is_dir() else [])]


@pytest.fixture()
def spai_cli(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Callable[..., CliRun]:
    """``spai_cli(*argv)``: run ``spai_cli.main(argv)`` in this process; its exit code and output (an argparse
    usage error is exit 2, as from the shell). Log lines (warnings naming skipped files) are appended to stderr,
    where a process would print them."""
    import spai_cli

    def run(*argv: object) -> CliRun:
        capsys.readouterr()
        caplog.clear()
        with caplog.at_level("INFO"):
            try:
                code = spai_cli.main([str(a) for a in argv])
            except SystemExit as e:  # argparse: --help and usage errors
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return CliRun(code, out, err + caplog.text)

    return run


@pytest.fixture()
def record(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``record(section, name, **fields)``: one finding of this test for docs/reliability.md. The test's
    assertions are what it checks; with ``--record`` the findings of the tests that passed are merged into
    tools/reliability/results/<section>.json (keyed by name: a partial run updates only what it ran) and the page
    is regenerated. Without ``--record`` nothing is written."""

    def _record(section: str, name: str, **fields: Any) -> None:
        _RECORDS.setdefault(request.node.nodeid, []).append({"section": section, "name": name, **fields})

    return _record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    if report.when == "call" and report.passed:  # a failed run is never recorded as the handling
        _PASSED.add(item.nodeid)
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    records = [r for node, recs in _RECORDS.items() if node in _PASSED for r in recs]
    if not records or not session.config.getoption("record"):
        return
    results_store.merge(records)
    subprocess.run([sys.executable, str(TOOLS_DIR / "make_report.py")], check=False, cwd=ROOT)
