"""Reliability suite fixtures: CLI subprocesses' environment and the opt-in ``slow`` cases.

Every test here that tries something (a bad input, a fault, a load run, a memory measurement) calls the
``record(section, name, **fields)`` fixture of tests/conftest.py: with ``pytest --record`` its findings become
docs/reliability.md; without it nothing tracked is written.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helpers
import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def spai_env() -> dict[str, str]:
    return helpers.spai_env()


@pytest.fixture(scope="session")
def run_spai(spai_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``helpers.run_spai`` with this session's environment."""

    def _run(*args: Any, **kw: Any) -> subprocess.CompletedProcess[str]:
        return helpers.run_spai(*args, env=kw.pop("env", None) or spai_env, **kw)

    return _run


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``slow`` reliability tests (8k/64 MP memory, kill -9 training runs) only with ``-m slow`` or
    SPAI_RELIABILITY_SLOW=1, so that plain ``pytest`` (CI) stays within a few minutes."""
    if "slow" in (config.option.markexpr or "") or os.environ.get("SPAI_RELIABILITY_SLOW"):
        return
    skip = pytest.mark.skip(reason="slow reliability test: run with -m slow or SPAI_RELIABILITY_SLOW=1")
    for item in items:
        if "slow" in item.keywords and HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)
