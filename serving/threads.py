"""Thread counts of one Python-backend model instance (each instance is its own process): so that the instances
of a server share the machine's cores instead of each taking all of them.

A model's config.pbtxt ``threads`` parameter says how many threads each of its instances uses for ONNX Runtime
(intra-op) and for OpenMP/BLAS; ``0`` means the cores this process may run on, shared among the model's
instances (``instance_group`` count).
"""

from __future__ import annotations

import os
from typing import Any

from spai.runners import available_cores

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def instance_count(config: dict[str, Any]) -> int:
    """Instances of a model (the sum of its instance groups' counts; Triton's default is 1)."""
    groups = config.get("instance_group") or [{}]
    return max(1, sum(int(g.get("count", 1)) for g in groups))


def instance_threads(requested: int, instances: int) -> int:
    """``requested`` threads, or (0) the available cores divided among ``instances``, at least 1."""
    return requested if requested > 0 else max(1, available_cores() // max(1, instances))


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
