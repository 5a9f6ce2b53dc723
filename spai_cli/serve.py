"""``spai serve``: run tritonserver on a model repository until Ctrl-C / SIGTERM (see docs/serving.md)."""

from __future__ import annotations

import argparse
import signal
import threading


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a Triton model repository (system tritonserver or nvidia-pytriton's)")
    p.add_argument("--repository", required=True, help="model repository (`spai repository` output)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all interfaces)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for all models to be ready")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serving.server import TritonServer
    from spai.errors import ServingError

    server = TritonServer(args.repository, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        server.start(timeout=args.timeout)
        print(f"tritonserver ready ({'bundled nvidia-pytriton' if server.bundled else server.binary})")
        print(f"  HTTP     http://{server.http_url}")
        print(f"  gRPC     {server.grpc_url}")
        print(f"  metrics  {server.metrics_url}")
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
