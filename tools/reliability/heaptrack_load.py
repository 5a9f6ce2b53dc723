"""The load test with the ``spai`` model's stubs running under heaptrack: which call sites hold the memory a stub's
RSS grows by (manual diagnosis; what found the error -> traceback -> frame cycles that kept whole batches alive).

    python tools/reliability/heaptrack_load.py OUT_DIR --requests 5000 --concurrency 32 --warmup-mixed 300
    heaptrack_print -f OUT_DIR/heaptrack.spai_0_0.PID.zst -l 1 -p 0 -a 0 -T 0 -n 15

Every argument after OUT_DIR goes to ``load_test.py``. The bundled server's Python-backend stub is replaced by a
script that starts the ``spai`` instances under ``heaptrack -o OUT_DIR/heaptrack.<instance>.<pid>`` (the encoder's
and aggregator's as they are); each file is written when its stub exits, i.e. when the load test stops the server
(heaptrack runs in a session of its own, so that the server's stop, which ends its process group, lets it write).
"Leaked" in heaptrack's report is what was still allocated at exit: in a Python process that includes garbage
the cycle collector had not freed yet. heaptrack slows the stubs (its interpreter takes a core of its own): read
allocation sites from this run, not RSS or throughput. Needs ``heaptrack`` on PATH (``apt install heaptrack``);
attaching to a running stub (``heaptrack -p``) fails in sandboxes without ptrace-injection support.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

import load_test  # noqa: E402
import serving.server as server  # noqa: E402

STUB = "triton_python_backend_stub"
WRAPPER = """#!/bin/bash
# argv[8] is the instance name (rss_series.STUB_NAME_ARG): spai_0_0, spai_patch_encoder_0_0, ...
case "$8" in
  spai_[0-9]*) exec setsid {heaptrack} -o {out}/heaptrack."$8".$$ {stub} "$@";;
  *) exec {stub} "$@";;
esac
"""


def backend_dir_with_heaptrack(out: Path):
    """A replacement of :func:`serving.server.make_backend_dir` whose stub runs the ``spai`` instances under
    heaptrack."""
    make_backend_dir = server.make_backend_dir

    def make(triton_dir: Path, dest: Path) -> Path:
        backends = make_backend_dir(triton_dir, dest)
        link = backends / "python" / STUB
        stub = os.path.realpath(link)
        link.unlink()
        link.write_text(WRAPPER.format(heaptrack=shutil.which("heaptrack"), out=out, stub=stub))
        link.chmod(0o755)
        return backends

    return make


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print("usage: python tools/reliability/heaptrack_load.py OUT_DIR [load_test.py arguments]", file=sys.stderr)
        return 2
    if shutil.which("heaptrack") is None:
        print("error: heaptrack is not on PATH; install it (apt install heaptrack).", file=sys.stderr)
        return 2
    out = Path(argv[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    server.make_backend_dir = backend_dir_with_heaptrack(out)
    return load_test.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
