"""Run ``spai ARGS`` in this process with an optional injected checkpoint-write fault (for the fault tests).

``SPAI_TEST_FAULT=kill:N``: on the N-th ``torch.save`` call, write half of the bytes to the temporary file and
SIGKILL this process (a kill -9 in the middle of a checkpoint write). ``SPAI_TEST_FAULT=oserror:N``: the N-th
``torch.save`` raises ``OSError(ENOSPC)`` after writing half the bytes (a full disk).
"""

from __future__ import annotations

import errno
import io
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def install_fault(spec: str) -> None:
    import torch

    kind, _, nth = spec.partition(":")
    target = int(nth or 1)
    original = torch.save
    calls = [0]

    def faulty_save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] != target:
            return original(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        original(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        with open(f, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    torch.save = faulty_save


if __name__ == "__main__":
    if os.environ.get("SPAI_TEST_FAULT"):
        install_fault(os.environ["SPAI_TEST_FAULT"])
    from spai_cli import main

    sys.exit(main(sys.argv[1:]))
