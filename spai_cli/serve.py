"""``spai serve``: run tritonserver on a model repository until Ctrl-C / SIGTERM (see docs/serving.md); prints
the options it started the server with (shared memory, heaps, instances, threads, batching)."""

from __future__ import annotations

import argparse
import signal
import threading


def register(sub: argparse._SubParsersAction) -> None:
    from serving.server import MiB, ServerOptions

    base = ServerOptions()
    p = sub.add_parser("serve", help="serve a Triton model repository (system tritonserver or nvidia-pytriton's)")
    p.add_argument("--repository", required=True, help="model repository (`spai repository` output)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all interfaces)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for all models to be ready")
    p.add_argument("--shm-default-mb", type=float, default=base.shm_default_bytes / MiB,
                   help="each Python-backend instance's shared-memory pool at start (MiB; allocated in /dev/shm; "
                        "sized so that it does not grow)")
    p.add_argument("--shm-growth-mb", type=float, default=base.shm_growth_bytes / MiB,
                   help="what a pool grows by when a request needs more (MiB; pools never shrink)")
    p.add_argument("--malloc-arena-max", type=int, default=base.malloc_arena_max,
                   help="MALLOC_ARENA_MAX of the server and its stubs (0: glibc's default, 8 per core)")
    p.add_argument("--malloc-mmap-threshold", type=int, default=base.malloc_mmap_threshold or 0,
                   help="MALLOC_MMAP_THRESHOLD_ (bytes) of the server and its stubs (0: glibc's, which rises)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serving.server import ServerOptions, TritonServer
    from spai.errors import ServingError

    options = ServerOptions.from_flags(args.shm_default_mb, args.shm_growth_mb, args.malloc_arena_max,
                                       args.malloc_mmap_threshold)
    server = TritonServer(args.repository, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, options=options)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        server.start(timeout=args.timeout)
        print(f"tritonserver ready ({'bundled nvidia-pytriton' if server.bundled else server.binary})")
        print(f"  HTTP     http://{server.http_url}")
        print(f"  gRPC     {server.grpc_url}")
        print(f"  metrics  {server.metrics_url}")
        print("\n".join(describe_options(server.options())))
        print("Ctrl-C to stop", flush=True)
        while not stop.wait(1.0):
            if server.process is None or server.process.poll() is not None:
                raise ServingError(f"tritonserver exited unexpectedly; last log lines:\n{server.log_tail()}")
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
        print("tritonserver stopped")
    return 0


def describe_options(options: dict) -> list[str]:
    """The lines ``spai serve`` prints about the options: process-wide first, then one line per model."""
    from serving.instance import instance_threads
    from serving.server import MiB

    arena = options["malloc_arena_max"] or "glibc default"
    mmap = options.get("malloc_mmap_threshold") or "glibc default"
    lines = [f"  options  Python backend shm pool {options['shm_default_bytes'] / MiB:g} MiB per instance, grows by "
             f"{options['shm_growth_bytes'] / MiB:g} MiB; MALLOC_ARENA_MAX={arena}, MALLOC_MMAP_THRESHOLD_={mmap}"]
    for name, m in options["models"].items():
        extra = [f"{k} {m[k]}" for k in ("in_flight", "encoder_chunk") if k in m]
        if "threads" in m:
            threads = int(m["threads"])
            extra.insert(0, f"threads {threads}" if threads else
                         f"threads {instance_threads(0, m['instances'])} (cores / instances)")
        if m.get("preferred_batch_size"):
            extra.append(f"preferred batch [{m['preferred_batch_size']}]")
        lines.append(f"  {name:<20} {m['backend']}, {m['instances']} x {m['kind']}, max batch {m['max_batch_size']}, "
                     f"queue delay {m['queue_delay_us']} us" + "".join(f", {e}" for e in extra))
    return lines
