"""Start and stop a ``tritonserver`` process: the system binary when one is on PATH (NGC containers, all
backends), otherwise the one bundled in nvidia-pytriton (Python backend only -> ``python-ort`` repositories).

The bundled binary needs (deployment-facts §7): a backend directory of our own whose ``python/`` holds
*symlinks* to pytriton's backend library, utils and the stub for this Python; the interpreter's ``bin`` first
on PATH and its LIBDIR on LD_LIBRARY_PATH (so the stub embeds this Python and imports numpy/onnxruntime/spai);
zero-sized pinned/CUDA memory pools on machines without a GPU driver.

Memory (:class:`ServerOptions`, printed by ``spai serve``, applied in pods by serving/deploy/tritonserver.py):
every Python-backend instance has a shared-memory pool in /dev/shm that starts at ``shm-default-byte-size``, sized
so that it does not grow (it would grow by ``shm-growth-byte-size`` and never shrink); each server gets its own
region prefix, so that the regions a killed server leaves behind are removed by :meth:`TritonServer.stop`.
``MALLOC_ARENA_MAX`` caps glibc's per-thread heaps in the server and its stubs.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from spai.errors import ServingError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MiB = 2**20
_SERVER_IDS = itertools.count()


@dataclass(frozen=True)
class ServerOptions:
    """Process-level options of a tritonserver: the Python backend's shared-memory pools and glibc's heaps.

    The pools start at their working size so that they do not grow: python_backend grows a pool by mapping the
    region again and keeps the old mapping, so every growth adds a mapping whose touched pages RSS counts once
    more, and a pool never shrinks (docs/reliability.md, "Memory over time"). tmpfs allocates the whole pool when
    a stub starts: /dev/shm must hold ``shm_default_bytes`` per Python-backend instance.
    """

    shm_default_bytes: int = 128 * MiB  # each Python-backend instance's pool at start (allocated in /dev/shm)
    shm_growth_bytes: int = 16 * MiB  # what it grows by if a request ever needs more
    malloc_arena_max: int | None = 2  # MALLOC_ARENA_MAX of the server and its stubs (None: glibc's 8 x cores)
    malloc_mmap_threshold: int | None = None  # MALLOC_MMAP_THRESHOLD_ in bytes (None: glibc's, which rises)

    def __post_init__(self) -> None:
        if self.shm_default_bytes < MiB or self.shm_growth_bytes < 1:
            raise ServingError("the Python backend needs shm-default-byte-size >= 1 MiB and shm-growth-byte-size "
                               f"> 0 (got {self.shm_default_bytes} and {self.shm_growth_bytes}).")
        if self.malloc_arena_max is not None and self.malloc_arena_max < 1:
            raise ServingError(f"MALLOC_ARENA_MAX must be at least 1 (got {self.malloc_arena_max}).")
        if self.malloc_mmap_threshold is not None and not 0 < self.malloc_mmap_threshold <= 32 * MiB:
            raise ServingError("MALLOC_MMAP_THRESHOLD_ must be between 1 byte and 32 MiB "
                               f"(got {self.malloc_mmap_threshold}).")

    @classmethod
    def from_flags(cls, shm_default_mb: float | None = None, shm_growth_mb: float | None = None,
                   malloc_arena_max: int | None = None, malloc_mmap_threshold: int | None = None) -> ServerOptions:
        """From command-line values (pools in MiB): None keeps the default; 0 for a malloc variable leaves it to
        glibc."""
        base = cls()

        def glibc(value: int | None, default: int | None) -> int | None:
            return default if value is None else (value or None)

        return cls(base.shm_default_bytes if shm_default_mb is None else int(shm_default_mb * MiB),
                   base.shm_growth_bytes if shm_growth_mb is None else int(shm_growth_mb * MiB),
                   glibc(malloc_arena_max, base.malloc_arena_max),
                   glibc(malloc_mmap_threshold, base.malloc_mmap_threshold))

    def backend_config(self, shm_prefix: str | None = None) -> list[str]:
        """The tritonserver arguments for the pools (and the region prefix, when one is given)."""
        args = [f"--backend-config=python,shm-default-byte-size={self.shm_default_bytes}",
                f"--backend-config=python,shm-growth-byte-size={self.shm_growth_bytes}"]
        return args + ([f"--backend-config=python,shm-region-prefix-name={shm_prefix}"] if shm_prefix else [])

    def environment(self) -> dict[str, str]:
        """The glibc variables of the server process (its stubs inherit them)."""
        env = {"MALLOC_ARENA_MAX": self.malloc_arena_max, "MALLOC_MMAP_THRESHOLD_": self.malloc_mmap_threshold}
        return {k: str(v) for k, v in env.items() if v is not None}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def bundled_triton_dir() -> Path | None:
    """pytriton's tritonserver folder, or None when nvidia-pytriton is not installed."""
    try:
        import pytriton
    except ImportError:
        return None
    path = Path(pytriton.__file__).resolve().parent / "tritonserver"
    return path if (path / "bin" / "tritonserver").is_file() else None


def make_backend_dir(triton_dir: Path, dest: Path) -> Path:
    """``dest/python`` with symlinks to the bundled Python backend and the stub matching this interpreter."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = triton_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServingError(f"nvidia-pytriton has no Python backend stub for Python {version} ({stub}); use a "
                           "supported Python (3.8-3.13) or a Triton container.")
    py = dest / "python"
    py.mkdir(parents=True, exist_ok=True)
    backend = triton_dir / "backends" / "python"
    for src in (backend / "libtriton_python.so", backend / "triton_python_backend_utils.py", stub):
        link = py / src.name
        if not link.is_symlink():
            link.symlink_to(src)
    return dest


def _kill_group(pgid: int) -> None:
    """SIGKILL every process left in process group ``pgid`` (the server's session: it and its stubs)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Ports:
    http: int
    grpc: int
    metrics: int


def find_binary() -> tuple[Path, bool]:
    """(tritonserver path, bundled?): the system binary first, then nvidia-pytriton's."""
    system = shutil.which("tritonserver")
    if system:
        return Path(system), False
    bundled = bundled_triton_dir()
    if bundled is None:
        raise ServingError("no tritonserver found: run inside an NGC Triton container (nvcr.io/nvidia/tritonserver) "
                           "or `pip install 'spai-deploy[serve]'` (nvidia-pytriton bundles a Python-only server).")
    return bundled / "bin" / "tritonserver", True


def check_repository(repository: Path, bundled: bool) -> None:
    """Fail early on a missing repository, or on non-Python models for the Python-only bundled server."""
    configs = sorted(repository.glob("*/config.pbtxt"))
    if not configs:
        raise ServingError(f"{repository}: no <model>/config.pbtxt found; build one with "
                           "`spai repository --artifacts EXPORT_DIR --variant python-ort -o REPO`.")
    if bundled:
        from serving.repository import read_config

        native = [c.parent.name for c in configs if read_config(c).platform]
        if native:
            raise ServingError(f"models {', '.join(native)} need TensorRT/ONNX Runtime backends that the tritonserver "
                               "bundled in nvidia-pytriton lacks; build the repository with --variant python-ort, or "
                               "run inside an NGC Triton container.")


def check_shm_space(repository: str | os.PathLike, options: ServerOptions, shm_dir: str = "/dev/shm") -> None:
    """ServingError if ``shm_dir`` cannot hold the pool of every Python-backend instance of ``repository`` (tmpfs
    allocates each when its stub starts; Triton would fail to load the model with a less clear message)."""
    instances = sum(m["instances"] for m in describe_repository(repository).values() if m["backend"] == "python")
    try:
        st = os.statvfs(shm_dir)
    except OSError:
        return
    free, need = st.f_bavail * st.f_frsize, instances * options.shm_default_bytes
    if need > free:
        raise ServingError(f"{shm_dir} has {free / MiB:.0f} MiB free but the {instances} Python-backend instances "
                           f"need {instances} x {options.shm_default_bytes / MiB:g} MiB of shared-memory pools; give "
                           f"the container more (`docker run --shm-size={-(-need // 2**30) + 1}g`, or a bigger "
                           "memory-backed /dev/shm volume) or lower `--shm-default-mb`.")


class TritonServer:
    """A tritonserver subprocess serving ``repository`` on loopback (by default) free ports.

    Use as a context manager (``with TritonServer(repo) as server: server.http_url``) or call
    start()/stop(). ``wait_ready`` polls /v2/health/ready and raises ServingError with the log tail if the
    process dies or readiness times out.
    """

    def __init__(self, repository: str | os.PathLike, host: str = "127.0.0.1", http_port: int | None = None,
                 grpc_port: int | None = None, metrics_port: int | None = None, binary: str | None = None,
                 extra_args: list[str] | None = None, log_verbose: int = 0,
                 options: ServerOptions | None = None) -> None:
        self.repository = Path(repository).resolve()
        self.host = host
        self.ports = Ports(http_port or free_port(), grpc_port or free_port(), metrics_port or free_port())
        self.binary, self.bundled = (Path(binary), False) if binary else find_binary()
        self.extra_args = list(extra_args or [])
        self.log_verbose = log_verbose
        self.server_options = options or ServerOptions()
        self.shm_prefix = f"spai_{os.getpid()}_{next(_SERVER_IDS)}_"
        self.process: subprocess.Popen | None = None
        self.exit_code: int | None = None  # after stop(): its exit status (0: it ended on SIGTERM), None if killed
        self._workdir = Path(tempfile.mkdtemp(prefix="spai-triton-"))
        self.log_path = self._workdir / "tritonserver.log"

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.ports.metrics}/metrics"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    def command(self) -> list[str]:
        """The tritonserver command line."""
        p = self.ports
        cmd = [str(self.binary), f"--model-repository={self.repository}", f"--http-port={p.http}",
               f"--grpc-port={p.grpc}", f"--metrics-port={p.metrics}", f"--http-address={self.host}",
               f"--grpc-address={self.host}", f"--metrics-address={self.host}", f"--log-verbose={self.log_verbose}"]
        if self.bundled:
            backends = make_backend_dir(bundled_triton_dir(), self._workdir / "backends")
            cmd += [f"--backend-directory={backends}", "--allow-gpu-metrics=false",
                    "--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0"]
        return cmd + self.server_options.backend_config(self.shm_prefix) + self.extra_args

    def environment(self) -> dict[str, str]:
        """This interpreter first on PATH, its LIBDIR on LD_LIBRARY_PATH, the project on PYTHONPATH."""
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(x for x in [libdir, env.get("LD_LIBRARY_PATH", "")] if x)
        env["PYTHONPATH"] = os.pathsep.join(x for x in [str(PROJECT_ROOT), env.get("PYTHONPATH", "")] if x)
        return {**env, **self.server_options.environment()}

    def options(self) -> dict:
        """What this server runs with: the process options, and per model its instances, threads and batching
        (read from the repository's config.pbtxt files)."""
        return {**asdict(self.server_options), "models": describe_repository(self.repository)}

    def start(self, timeout: float = 120.0) -> TritonServer:
        """Launch the process and wait until every model is ready."""
        if self.process is not None:
            return self
        check_repository(self.repository, self.bundled)
        check_shm_space(self.repository, self.server_options)
        self.exit_code = None
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            env=self.environment(), start_new_session=True)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def is_ready(self) -> bool:
        """True when /v2/health/ready answers 200."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll readiness; ServingError (with the log tail) if the process exits or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServingError(f"tritonserver exited with code {self.process.returncode} before becoming "
                                   f"ready; last log lines:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.25)
        raise ServingError(f"tritonserver not ready after {timeout:.0f} s (a model may still be loading or failed); "
                           f"last log lines:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (graceful: in-flight requests finish), SIGKILL after ``timeout``; then ends what is left of the
        server's process group (the stubs of a server that died on its own can outlive it, one kept two cores
        busy) and removes the shared-memory regions a killed server left in /dev/shm. Idempotent."""
        proc, self.process = self.process, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            self.exit_code = proc.poll()  # None: it has not ended within the timeout and is killed
            _kill_group(proc.pid)
            proc.wait(5)
        self.remove_shm_regions()

    def remove_shm_regions(self) -> list[str]:
        """Delete this server's leftover Python-backend regions (/dev/shm/<prefix>*), once it has exited."""
        if self.process is not None and self.process.poll() is None:
            return []
        removed = []
        for path in glob.glob(f"/dev/shm/{glob.escape(self.shm_prefix)}*"):
            try:
                os.remove(path)
                removed.append(path)
            except OSError:
                pass
        return removed

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def describe_repository(repository: str | os.PathLike) -> dict[str, dict]:
    """Per model of a repository: backend, instances (count and kind), max_batch_size, batching and the
    ``threads`` / ``in_flight`` / ``encoder_chunk`` parameters, read from each config.pbtxt (Triton's ModelConfig)."""
    from serving.repository import model_config_pb2, read_config

    kind = model_config_pb2().ModelInstanceGroup.Kind
    out = {}
    for path in sorted(Path(repository).glob("*/config.pbtxt")):
        config = read_config(path)
        params = {k: v.string_value for k, v in config.parameters.items()}
        groups, batching = config.instance_group, config.dynamic_batching
        out[path.parent.name] = {
            "backend": config.backend or config.platform,
            "instances": sum(g.count or 1 for g in groups) or 1,  # Triton: a group without a count has one
            "kind": kind.Name(groups[0].kind) if groups else "KIND_AUTO",
            "max_batch_size": config.max_batch_size,
            "queue_delay_us": batching.max_queue_delay_microseconds,
            "preferred_batch_size": ", ".join(str(b) for b in batching.preferred_batch_size),
            **{k: params[k] for k in ("threads", "in_flight", "encoder_chunk") if k in params}}
    return out
