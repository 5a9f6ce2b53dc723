"""One real process per command: ``python -m spai_cli <command> --help`` starts (the entry point, every command's
imports, its parser) and a user mistake prints ``error: ...`` without a traceback and exits 1 from a real process.

Everything else about the commands runs in-process (tests/spai_cli/test_cli_exit_codes.py and the feature tests).
"""

from __future__ import annotations

import pytest
from helpers import assert_clean_failure, run_spai

import spai_cli


@pytest.mark.parametrize("command", spai_cli.COMMAND_MODULES)
def test_every_command_starts_and_prints_its_help(command):
    proc = run_spai(command, "--help", timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: spai {command}"), proc.stdout[:500]


def test_a_user_mistake_is_one_error_line_and_exit_1(tmp_path):
    proc = run_spai("report", tmp_path / "nope.csv", "-o", tmp_path / "r.html", timeout=120)
    assert_clean_failure(proc, 1, "no such scores file")
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
