"""A pytest plugin that fails a run which changed tracked files (``make test`` must leave a fresh clone clean).

At start it notes each tracked file that differs from the index (``git status``) with a hash of its content; at the
end it asks again and fails the session, naming the files, if anything tracked was written, deleted or restored in
between. Files that were already edited before the run are only blamed if the run changed them further. Untracked
files (outputs under ``tmp_path``, new results) are not its business. Outside a git checkout it does nothing.

Registered by tests/conftest.py and benchmarks/conftest.py when ``SPAI_CHECK_CLEAN_TREE=1`` (``make test`` sets
it): a developer editing files while a plain ``pytest`` runs is not failed for it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

VARIABLE = "SPAI_CHECK_CLEAN_TREE"
PLUGIN_NAME = "clean-tree"


def tracked_changes(root: Path) -> dict[str, str] | None:
    """Tracked files of the checkout holding ``root`` that differ from the index: path (from the checkout's top) ->
    SHA-256 of their content ("" when deleted); None outside a git checkout or without git."""
    git = ["git", "--no-optional-locks", "-C", str(root)]  # a check must not rewrite .git/index itself
    try:
        top = Path(os.fsdecode(subprocess.run([*git, "rev-parse", "--show-toplevel"], capture_output=True,
                                              check=True).stdout.strip()))
        out = os.fsdecode(subprocess.run([*git, "status", "--porcelain=v1", "-z", "--untracked-files=no"],
                                         capture_output=True, check=True).stdout)
    except (OSError, subprocess.CalledProcessError):
        return None
    entries = iter(out.split("\0"))
    changes = {}
    for entry in entries:
        if not entry:
            continue
        if "R" in entry[:2] or "C" in entry[:2]:  # a rename or copy (index or worktree): its source path follows
            next(entries, None)
        path = top / entry[3:]
        changes[entry[3:]] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
    return changes


class CleanTreeGuard:
    """Notes the tracked changes when created; fails the session if they differ when it finishes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.before = tracked_changes(root)

    def changed_files(self) -> list[str]:
        """The tracked files this run wrote, deleted or restored."""
        if self.before is None:
            return []
        after = tracked_changes(self.root) or {}
        return sorted(p for p in after.keys() | self.before.keys() if after.get(p) != self.before.get(p))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        changed = self.changed_files()
        if not changed:
            return
        if session.exitstatus == pytest.ExitCode.OK:  # never hide a worse status (interrupted, internal error)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "tracked files changed by this run", red=True)
            reporter.write_line(f"{', '.join(changed)}: a test run must not write tracked files; write to tmp_path, "
                                "or make the write opt-in (as --record is). Restore them with `git checkout -- "
                                "FILE`.")


def register(config: pytest.Config, root: Path) -> None:
    """Enable the guard for this session when ``SPAI_CHECK_CLEAN_TREE=1`` (once, whichever conftest asks first)."""
    if os.environ.get(VARIABLE) == "1" and not config.pluginmanager.has_plugin(PLUGIN_NAME):
        config.pluginmanager.register(CleanTreeGuard(root), PLUGIN_NAME)
