"""The clean-tree guard (tools/clean_tree.py) that `make test` runs with: a real pytest session in a scratch git
checkout fails, naming the file, when a test writes a tracked file, and passes when it writes only untracked ones
or leaves an already-edited file as it found it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

CONFTEST = """
from pathlib import Path
import clean_tree

def pytest_configure(config):
    clean_tree.register(config, Path(__file__).parent)
    clean_tree.register(config, Path(__file__).parent)  # as both conftests of a combined run do: registered once
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git checkout holding a conftest that registers the guard and one tracked data file."""
    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        pytest.skip("git is not installed")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "data.txt").write_text("as committed\n")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    return tmp_path


def run_session(checkout: Path, test_body: str, guard: str = "1") -> subprocess.CompletedProcess:
    (checkout / "test_it.py").write_text(f"from pathlib import Path\n\ndef test_it():\n    {test_body}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tools"), os.environ.get("PYTHONPATH", "")]),
           "SPAI_CHECK_CLEAN_TREE": guard}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_it.py"],
                          cwd=checkout, env=env, capture_output=True, text=True, timeout=120)


def test_a_run_that_writes_a_tracked_file_fails_and_names_it(checkout):
    result = run_session(checkout, "Path(__file__).with_name('data.txt').write_text('rewritten')")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "tracked files changed by this run" in result.stdout and "data.txt" in result.stdout
    assert "1 passed" in result.stdout  # the test itself passed: the guard failed the session


def test_without_the_variable_the_guard_is_off(checkout):
    result = run_session(checkout, "Path(__file__).with_name('data.txt').write_text('rewritten')", guard="")
    assert result.returncode == 0, result.stdout


def test_untracked_outputs_and_files_edited_before_the_run_pass(checkout):
    (checkout / "data.txt").write_text("edited by hand before the run\n")
    result = run_session(checkout, "Path(__file__).with_name('new_output.json').write_text('{}')")
    assert result.returncode == 0, result.stdout


def test_a_run_that_deletes_a_tracked_file_fails(checkout):
    result = run_session(checkout, "Path(__file__).with_name('data.txt').unlink()")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED and "data.txt" in result.stdout
