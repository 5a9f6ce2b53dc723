"""``spai data``: dataset utilities (``spai data proxy``: the offline proxy dataset for smoke tests)."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    proxy = data_sub.add_parser("proxy", help="write the deterministic PROXY dataset (smoke tests, not a benchmark)")
    proxy.add_argument("--output", required=True, help="directory to write images/ and data.csv into")
    proxy.add_argument("--n", type=int, default=200, help="number of source scenes (2 images each; default 200)")
    proxy.add_argument("--seed", type=int, default=0, help="seed (same seed -> identical files)")
    proxy.set_defaults(func=run_proxy)


def run_proxy(args: argparse.Namespace) -> int:
    from spai.data.proxy import make_proxy_dataset

    start = time.perf_counter()
    csv_path = make_proxy_dataset(args.output, n=args.n, seed=args.seed)
    print(f"wrote {2 * args.n} proxy images and {csv_path} in {time.perf_counter() - start:.1f} s "
          "(a synthetic smoke-test dataset, not real AI-generated images)")
    return 0
