"""Reliability suite fixtures: a results recorder whose findings become docs/reliability.md.

Every test that tries something (a bad input, a fault, a load run, a memory measurement) calls
``record(section, name, **fields)``. At the end of the session the records are merged into
``tests/reliability/results/<section>.json`` (keyed by name, so a partial run updates only what it ran and the
slow/manual results of earlier runs are kept) and ``make_report.py`` regenerates ``docs/reliability.md``.
Set ``SPAI_RELIABILITY_NO_REPORT=1`` to leave both untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import results_store  # noqa: E402  (tests/reliability/results_store.py)

_RECORDS: list[dict] = []


@pytest.fixture(scope="session")
def record():
    """``record(section, name, **fields)``: log one finding for the generated report."""

    def _record(section: str, name: str, **fields) -> None:
        _RECORDS.append({"section": section, "name": name, **fields})

    return _record


@pytest.fixture(scope="session")
def spai_env() -> dict[str, str]:
    """Environment for CLI subprocesses: the project importable, UTF-8 I/O, quiet warnings."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in [str(ROOT), env.get("PYTHONPATH", "")] if x)
    env.setdefault("PYTHONWARNINGS", "ignore")
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")
    return env


@pytest.fixture(scope="session")
def run_spai(spai_env):
    """Run ``python -m spai_cli ARGS`` and return the CompletedProcess (text, captured)."""

    def _run(*args: str, timeout: float = 300, env: dict | None = None, cwd: str | Path | None = None):
        return subprocess.run([sys.executable, "-m", "spai_cli", *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env=env or spai_env, cwd=cwd or ROOT, errors="replace")

    return _run


def assert_clean_failure(proc, code: int = 1, match: str | None = None) -> None:
    """A user mistake: the documented exit code, an ``error:`` message, never a traceback."""
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    assert proc.returncode == code, f"exit {proc.returncode}, wanted {code}:\n{out[-3000:]}"
    assert "error" in out.lower(), out[-3000:]
    if match:
        import re

        assert re.search(match, out, re.I | re.S), f"{match!r} not in:\n{out[-3000:]}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``slow`` reliability tests (8k/64 MP memory, kill -9 training runs) only with ``-m slow`` or
    SPAI_RELIABILITY_SLOW=1, so that plain ``pytest`` (CI) stays within a few minutes."""
    if "slow" in (config.option.markexpr or "") or os.environ.get("SPAI_RELIABILITY_SLOW"):
        return
    skip = pytest.mark.skip(reason="slow reliability test: run with -m slow or SPAI_RELIABILITY_SLOW=1")
    for item in items:
        if "slow" in item.keywords and HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _RECORDS or os.environ.get("SPAI_RELIABILITY_NO_REPORT"):
        return
    results_store.merge(_RECORDS)
    subprocess.run([sys.executable, str(HERE / "make_report.py")], check=False, cwd=ROOT)
