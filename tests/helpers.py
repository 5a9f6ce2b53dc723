"""Helpers shared by the test folders, written once: the CLI runners (in-process and subprocess), the check of a
clean user-error exit, Triton config parsing and the decompression-bomb images.

Importable as ``helpers`` (tests/conftest.py puts tests/ and tools/reliability/ on ``sys.path``).
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rel_corpus import good_jpeg, png_bomb  # tools/reliability/rel_corpus.py: the one bomb maker

from spai.lazy import lazy_import

torch = lazy_import("torch")
text_format = lazy_import("google.protobuf.text_format")
model_config_pb2 = lazy_import("tritonclient.grpc.model_config_pb2")

ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = ROOT / "tests"
TOOLS_DIR = ROOT / "tools" / "reliability"

__all__ = ["ROOT", "TESTS_DIR", "TOOLS_DIR", "CliRun", "assert_clean_failure", "good_jpeg", "parse_pbtxt",
           "pbtxt_parameters", "png_bomb", "run_spai", "spai_env", "write_bad_checkpoints"]


class Completed(Protocol):
    """What both runners return: a subprocess.CompletedProcess or a :class:`CliRun`."""

    returncode: int
    stdout: str
    stderr: str


@dataclass
class CliRun:
    """``spai_cli.main(argv)`` run in this process: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def last_error_line(self) -> str:
        """The ``error: ...`` line (log lines come after it here), else the last line."""
        lines = self.stderr.strip().splitlines() or [""]
        return next((line for line in reversed(lines) if line.startswith("error: ")), lines[-1])


def spai_env() -> dict[str, str]:
    """Environment for CLI subprocesses: the project importable, quiet warnings, two threads (the CI machine)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in [str(ROOT), env.get("PYTHONPATH", "")] if x)
    env.setdefault("PYTHONWARNINGS", "ignore")
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")
    return env


def run_spai(*args: Any, timeout: float = 300, env: dict[str, str] | None = None,
             cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m spai_cli ARGS`` in a fresh process (text, captured): for what only a real process shows (the
    entry point, a kill, an import-time failure). Exit codes of user mistakes are checked in-process instead."""
    return subprocess.run([sys.executable, "-m", "spai_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env or spai_env(), cwd=cwd or ROOT, errors="replace")


def assert_clean_failure(proc: Completed, code: int = 1, match: str | None = None) -> None:
    """A user mistake: the documented exit code, an ``error:`` message, never a traceback."""
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    assert proc.returncode == code, f"exit {proc.returncode}, wanted {code}:\n{out[-3000:]}"
    assert "error" in out.lower(), out[-3000:]
    if match:
        assert re.search(match, out, re.I | re.S), f"{match!r} not in:\n{out[-3000:]}"


def parse_pbtxt(path: Path) -> Any:
    """A Triton ``config.pbtxt`` parsed by Triton's own protobuf schema (what tritonserver would read)."""
    return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())


def pbtxt_parameters(cfg: Any) -> dict[str, str]:
    """A parsed config's ``parameters`` as plain strings."""
    return {k: v.string_value for k, v in cfg.parameters.items()}


class _Evil:
    """Unpickling it would create ``marker``: proof that a loader executed code from a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def write_bad_checkpoints(model: Any, folder: Path) -> dict[str, tuple[Path, str]]:
    """Every kind of bad checkpoint, made from ``model``'s good one: name -> (file, regex of the expected message).
    The malicious pickle would create ``folder/PWNED``."""
    import spai

    good = spai.save_checkpoint(model, folder / "good.pth", epoch=0)
    data = good.read_bytes()
    (folder / "truncated.pth").write_bytes(data[: len(data) // 3])
    (folder / "empty.pth").write_bytes(b"")
    (folder / "text.pth").write_text("this is not a checkpoint\n")
    (folder / "image.pth").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    state = torch.load(good, weights_only=True)
    state["model"]["norm.weight"][0] = float("nan")
    torch.save(state, folder / "nan.pth")
    torch.save([1, 2, 3], folder / "list.pth")
    torch.save({"format": "spai-deploy/1", "weights": {}}, folder / "nokeys.pth")
    with open(folder / "evil.pth", "wb") as f:
        pickle.dump({"model": _Evil(folder / "PWNED")}, f)
    return {
        "truncated checkpoint": (folder / "truncated.pth", "truncated or not a PyTorch checkpoint"),
        "empty checkpoint": (folder / "empty.pth", "empty"),
        "text file as checkpoint": (folder / "text.pth", "checkpoint"),
        "PNG bytes as checkpoint": (folder / "image.pth", "checkpoint"),
        "NaN weights": (folder / "nan.pth", "NaN"),
        "pickled list instead of a dict": (folder / "list.pth", "checkpoint|dict"),
        "dict without weights": (folder / "nokeys.pth", "checkpoint|format|model"),
        "pickle that would execute code": (folder / "evil.pth", "checkpoint|unsafe|refus|not allowed|forbidden"),
        "missing checkpoint": (folder / "missing.pth", "does not exist"),
    }


def rows_on_disk(out: Path) -> int:
    """Rows a scoring run has made durable so far: CSV lines past the header, or Parquet part files."""
    if out.suffix == ".csv":
        return max(0, out.read_bytes().count(b"\n") - 1) if out.exists() else 0
    return len(list(out.glob("part-*.parquet")))


def run_spai_killed_at(args: list[str], out: Path, kill_after: int | None, poll_s: float = 0.02) -> int | None:
    """Run ``python -m spai_cli ARGS``; SIGKILL it once ``kill_after`` rows (CSV) / parts (Parquet) are on disk
    (:func:`rows_on_disk`). Returns its exit code, asserted 0, or None when it was killed."""
    proc = subprocess.Popen([sys.executable, "-m", "spai_cli", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if kill_after is not None and rows_on_disk(out) >= kill_after:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return None
        time.sleep(poll_s)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    return proc.returncode
