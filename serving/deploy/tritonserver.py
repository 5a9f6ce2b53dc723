"""Start tritonserver for a spai repository in a pod: ``python3 serving/deploy/tritonserver.py [tritonserver] ARGS``.

The container command of serving/deploy/k8s/deployment.yaml and of the KServe predictor (whose runtime passes
``tritonserver --model-store=/mnt/models ...`` as arguments). Before it execs tritonserver with ARGS it

1. refuses plans this container's TensorRT cannot load: the repository's ``engine.json`` (written by
   ``spai repository --variant trt``) against the TensorRT the container has (``$TRT_VERSION`` /
   ``libnvinfer.so.X.Y.Z``), with a message instead of Triton's "engine plan file is not compatible";
2. adds the arguments the repository asks for (``tritonserver.args``: the backend option that loads
   version-compatible plans);
3. sets the thread count of every CPU model instance (the Python-backend processes: numpy/OpenBLAS, torch and
   OpenMP read these at start) from the pod's CPU request: ``$SPAI_CPU_REQUEST_MILLI`` (the Downward API's
   ``requests.cpu`` in millicores) divided by the KIND_CPU instances of the repository's configs, at least 1.
   Without it, each instance would start one thread per node core while the pod requests a few CPUs;
4. applies the memory options ``spai serve`` starts its servers with (:class:`serving.server.ServerOptions`:
   Python-backend pools that start at their working size, ``MALLOC_ARENA_MAX``), where ARGS and the pod's
   environment do not set them, and refuses to start when /dev/shm cannot hold the pools.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from export.manifest import check_tensorrt_version, read_manifest, runtime_tensorrt_version
from serving.instance import POD_SHARE_VARIABLE
from serving.instance import THREAD_VARIABLES as INSTANCE_THREAD_VARIABLES
from serving.repository import SERVER_ARGS_FILE
from serving.server import ServerOptions, check_shm_space
from spai.errors import SPAIError
from spai.model.specs import MANIFEST_FILE

THREAD_VARIABLES = (*INSTANCE_THREAD_VARIABLES, POD_SHARE_VARIABLE)
CPU_REQUEST_VARIABLE = "SPAI_CPU_REQUEST_MILLI"
_REPO_FLAGS = ("--model-repository=", "--model-store=")
_CPU_GROUP = re.compile(r"count:\s*(\d+)\s+kind:\s*KIND_CPU\b")


def repository_of(argv: Sequence[str]) -> Path:
    """The model repository named by ``--model-repository=`` / ``--model-store=`` (KServe's spelling)."""
    for arg in argv:
        for flag in _REPO_FLAGS:
            if arg.startswith(flag):
                return Path(arg[len(flag):])
    raise SystemExit("error: no --model-repository=DIR (or --model-store=DIR) among the tritonserver arguments.")


def cpu_instances(repo: Path) -> int:
    """KIND_CPU model instances over all models of the repository (each a process or thread pool of its own)."""
    return sum(int(n) for cfg in sorted(repo.glob("*/config.pbtxt")) for n in _CPU_GROUP.findall(cfg.read_text()))


def threads_per_instance(cpu_request_milli: int, instances: int) -> int:
    """Whole cores of the pod's CPU request per CPU instance, at least 1."""
    return max(1, cpu_request_milli // 1000 // max(1, instances))


def thread_environment(repo: Path, env: Mapping[str, str]) -> dict[str, str]:
    """The thread variables for this pod (only those not already set explicitly)."""
    request = env.get(CPU_REQUEST_VARIABLE, "").strip()
    if not request.isdigit():
        return {}
    threads = str(threads_per_instance(int(request), cpu_instances(repo)))
    return {name: threads for name in THREAD_VARIABLES if name not in env}


def check_engines(repo: Path, env: Mapping[str, str]) -> str | None:
    """None if the repository's plans load on this container's TensorRT (or it cannot tell), else why not."""
    if not (repo / MANIFEST_FILE).is_file():
        return None
    found = runtime_tensorrt_version(env)
    if found is None:
        return None
    try:
        check_tensorrt_version(read_manifest(repo, require_plans=False), found[0],
                               f"this container's TensorRT ({found[1]})")
    except SPAIError as e:
        return str(e)
    return None


def server_command(argv: Sequence[str], env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """(tritonserver argv, environment) for ``argv`` (the launcher's arguments, with or without a leading
    ``tritonserver``); SystemExit with the reason if the repository's plans cannot load here."""
    args = list(argv[1:] if argv and Path(argv[0]).name == "tritonserver" else argv)
    repo = repository_of(args)
    problem = check_engines(repo, env)
    if problem:
        raise SystemExit(f"error: {problem}")
    extra_file = repo / SERVER_ARGS_FILE
    extra = extra_file.read_text().split() if extra_file.is_file() else []
    options = ServerOptions()
    extra += [a for a in options.backend_config() if not _option_given(a, args)]
    memory = {k: v for k, v in options.environment().items() if k not in env}
    try:
        check_shm_space(repo, ServerOptions(shm_default_bytes=_pool_bytes([*args, *extra])))
    except SPAIError as e:
        raise SystemExit(f"error: {e}") from None
    return (["tritonserver", *args, *[a for a in extra if a not in args]],
            {**env, **thread_environment(repo, env), **memory})


def _pool_bytes(args: Sequence[str]) -> int:
    """The Python-backend pool size these tritonserver arguments set (the first one given)."""
    key = "--backend-config=python,shm-default-byte-size="
    value = next(a[len(key):] for a in args if a.startswith(key))
    if not value.isdigit():
        raise SystemExit(f"error: {key}{value}: the pool size must be a whole number of bytes (e.g. 134217728).")
    return int(value)


def _option_given(arg: str, args: Sequence[str]) -> bool:
    """Whether ``args`` already set the option of ``arg`` (``--backend-config=python,KEY=`` or ``--flag=``)."""
    key = arg.rsplit("=", 1)[0] + "="
    return any(a.startswith(key) for a in args)


def main(argv: Sequence[str] | None = None) -> None:
    command, env = server_command(sys.argv[1:] if argv is None else argv, os.environ)
    threads = env.get("OMP_NUM_THREADS", "unset")
    print(f"spai: {' '.join(command)} (threads per CPU instance: {threads})", flush=True)
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main()
