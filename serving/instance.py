"""What one Python-backend model instance (its own process) sets for itself: thread counts, so that the
instances of a server share the machine's cores instead of each taking all of them, and heap trimming, so that
the memory of a large batch is given back.

A model's config.pbtxt ``threads`` parameter says how many threads each of its instances uses for ONNX Runtime
(intra-op) and for OpenMP/BLAS; ``0`` means the pod launcher's share of the pod's CPU request
(``$SPAI_INTRA_OP_THREADS``, set by ``serving/deploy/tritonserver.py``) where set, else the cores this process may
run on, shared among the model's instances (``instance_group`` count). :class:`HeapTrimmer` calls glibc's
``malloc_trim`` after executes that decoded many pixels: freed chunks of a large batch otherwise stay in the
process's heaps and its RSS ratchets up to the largest batch mix ever seen.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Mapping
from typing import Any

from spai.infer.runners import available_cores

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
POD_SHARE_VARIABLE = "SPAI_INTRA_OP_THREADS"  # threads per CPU instance from the pod's CPU request


def instance_count(config: dict[str, Any]) -> int:
    """Instances of a model (the sum of its instance groups' counts; Triton's default is 1)."""
    groups = config.get("instance_group") or [{}]
    return max(1, sum(int(g.get("count", 1)) for g in groups))


def instance_threads(requested: int, instances: int, env: Mapping[str, str] = os.environ) -> int:
    """``requested`` threads, or (0) the pod's share per instance (:data:`POD_SHARE_VARIABLE`: in a pod the
    process sees every core of the node, not its CPU request), else the available cores divided among
    ``instances``; at least 1."""
    if requested > 0:
        return requested
    share = env.get(POD_SHARE_VARIABLE, "").strip()
    if share.isdigit() and int(share) > 0:
        return int(share)
    return max(1, available_cores() // max(1, instances))


def limit_threads(threads: int) -> int:
    """Cap this process's OpenMP/BLAS threads at ``threads``: the environment for libraries loaded later,
    threadpoolctl (when installed) for those already loaded (the stub imports numpy before the model)."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return threads
    threadpool_limits(threads)
    return threads


class HeapTrimmer:
    """``malloc_trim(0)`` once at least ``every_bytes`` were handled since the last trim (0: never; also a no-op
    where the C library has no malloc_trim, i.e. not glibc)."""

    def __init__(self, every_bytes: int) -> None:
        self.every_bytes, self.pending, self.trims = every_bytes, 0, 0
        self._trim = _malloc_trim() if every_bytes > 0 else None

    def handled(self, nbytes: int) -> bool:
        """Count ``nbytes`` handled; trims (and returns True) when the threshold is reached."""
        if self._trim is None:
            return False
        self.pending += nbytes
        if self.pending < self.every_bytes:
            return False
        self.pending = 0
        self.trims += 1
        self._trim(0)
        return True


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
