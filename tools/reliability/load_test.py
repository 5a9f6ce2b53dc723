"""Load test of the Triton deployment: N requests at concurrency C, mixed sizes with bad inputs among them.

Loopback only. By default it exports spai-tiny (seeded), builds a python-ort repository and starts the
tritonserver bundled in nvidia-pytriton on 127.0.0.1 free ports; ``--url`` targets a server already running on
this machine instead (RSS is then measured only when ``--server-pid`` is given).

Checks (exit 1 when one fails, with the numbers): zero failures among good requests; every bad request gets a
clear error; the server is ready afterwards; RSS of the server processes (tritonserver + its Python backend
stubs, summed) grows at most ``--max-rss-growth`` (10 %) from after warm-up to the end of the load and at most
``--max-rss-growth-last-half`` (2 %) over its last half (checked when the load lasts at least two windows of
``rss_series.WINDOW``, ten minutes). ``--rejudge`` recomputes the RSS fields and verdicts of every recorded run from
its saved series (after the judging changed), keeping the rest of each record.
``--kill-test`` then kills the server (SIGKILL) in the middle of a second burst and checks that clients get clear
errors within their timeout (and that the configured retries happened), never a hang.

RSS is sampled once a second for every server process separately (``rss_series.py``: RSS, its anonymous and
shared-memory parts, each stub's shared-memory pool); ``--rss-series PATH`` (default with ``--record``:
``results/rss/<name>.json``) keeps the series, which ``make_report.py`` plots into docs/reliability.md.

Soak (manual, ~40 min on 2 cores):  python tools/reliability/load_test.py --requests 20000 --concurrency 32 --record
CI run (pytest -m triton):         tests/reliability/test_serving_load.py runs --requests 100 --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE))

import rss_series  # noqa: E402  (tools/reliability/rss_series.py)

GOOD_SIZES = [(64, 48), (224, 224), (300, 400), (640, 480), (1024, 768), (1500, 1100)]


@dataclass
class Outcome:
    kind: str  # "good" | "bad"
    label: str
    ok: bool
    latency_ms: float
    error: str = ""


def make_payloads(seed: int = 0) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(good, bad) encoded images; bad ones come from the reliability corpus."""
    import rel_corpus as rc

    good = [(f"{w}x{h}.jpg", rc.good_jpeg(h, w, seed + i)) for i, (w, h) in enumerate(GOOD_SIZES)]
    good.append(("1x1.png", rc.encode(rc.Image.new("RGB", (1, 1), (5, 6, 7)), "PNG")))
    bad_names = {"empty file", "truncated JPEG", "corrupt PNG (IDAT overwritten)", "text file named .png",
                 "PDF named .jpg", "decompression bomb PNG (header 30000x30000)", "truncated WebP"}
    bad = [(c.filename, c.make()) for c in rc.cases() if c.name in bad_names]
    return good, bad


def run_burst(client, payloads: list[tuple[str, str, bytes]], concurrency: int) -> tuple[list[Outcome], float]:
    from spai.errors import ServingError

    def one(item: tuple[str, str, bytes]) -> Outcome:
        kind, label, data = item
        t = time.perf_counter()
        try:
            out = client.infer(data)
            p = float(out["probability"][0, 0])
            ok = 0.0 <= p <= 1.0
            return Outcome(kind, label, ok, (time.perf_counter() - t) * 1e3, "" if ok else f"probability {p}")
        except ServingError as e:
            return Outcome(kind, label, False, (time.perf_counter() - t) * 1e3, str(e).strip()[:300])

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(one, payloads))
    return outcomes, time.perf_counter() - start


def schedule(n: int, good, bad, bad_fraction: float, seed: int) -> list[tuple[str, str, bytes]]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        if bad and rng.random() < bad_fraction:
            label, data = bad[i % len(bad)]
            items.append(("bad", label, data))
        else:
            label, data = rng.choice(good)
            items.append(("good", label, data))
    return items


def summarise(outcomes: list[Outcome], seconds: float) -> dict:
    import numpy as np

    good = [o for o in outcomes if o.kind == "good"]
    bad = [o for o in outcomes if o.kind == "bad"]
    lat = np.array([o.latency_ms for o in good]) if good else np.zeros(1)
    return {
        "requests": len(outcomes), "good": len(good), "bad": len(bad),
        "good_failures": sum(not o.ok for o in good), "bad_accepted": sum(o.ok for o in bad),
        "seconds": round(seconds, 2), "throughput_rps": round(len(outcomes) / seconds, 2) if seconds else 0,
        "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "first_good_errors": sorted({o.error for o in good if not o.ok})[:5],
        "bad_error_examples": sorted({f"{o.label}: {o.error[:120]}" for o in bad if not o.ok})[:8],
    }


def kill_test(server, client_factory, payloads, concurrency: int) -> dict:
    """SIGKILL the server while a burst is in flight: every request must end (no hang) with a clear error or
    a result; after the kill, new requests fail fast with a clear message after the configured retries."""
    from spai.errors import ServingError

    client = client_factory(retries=2, timeout_s=20.0)
    proc = server.process
    killer = threading.Timer(1.5, lambda: os.killpg(proc.pid, signal.SIGKILL))
    killer.start()
    outcomes, seconds = run_burst(client, payloads, concurrency)
    killer.join()
    errors = [o for o in outcomes if not o.ok and o.kind == "good"]
    proc.wait(10)
    t = time.perf_counter()
    try:
        client.infer(payloads[0][2])
        after = "unexpected success"
    except ServingError as e:
        after = str(e).strip()[:200]
    retry_seconds = time.perf_counter() - t
    server.process = None
    return {"requests": len(outcomes), "completed_before_kill": sum(o.ok for o in outcomes),
            "client_errors": len(errors), "burst_seconds": round(seconds, 1),
            "error_examples": sorted({o.error[:160] for o in errors})[:3],
            "after_kill_error": after, "after_kill_seconds_with_2_retries": round(retry_seconds, 2),
            "hung": False}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=0, help="warm-up requests by size (default 2 x concurrency x sizes)")
    ap.add_argument("--warmup-mixed", type=int, default=-1,
                    help="then warm-up requests of the load's mix (default 15%% of --requests)")
    ap.add_argument("--bad-fraction", type=float, default=0.1)
    ap.add_argument("--protocol", choices=["http", "grpc"], default="http")
    ap.add_argument("--url", help="an already running server on this machine (127.0.0.1:PORT)")
    ap.add_argument("--server-pid", type=int, help="with --url: the server's pid, for the RSS check")
    ap.add_argument("--repository", help="python-ort repository to serve (default: build one from spai-tiny)")
    ap.add_argument("--max-rss-growth", type=float, default=0.10, help="after warm-up to the end of the load")
    ap.add_argument("--max-rss-growth-last-half", type=float, default=0.02, help="over the last half of the load")
    ap.add_argument("--rss-series", help="write the RSS series here (default with --record: results/rss/NAME.json)")
    ap.add_argument("--shm-default-mb", type=float, help="Python backend pool at start (default: ServerOptions)")
    ap.add_argument("--shm-growth-mb", type=float, help="Python backend pool growth (default: ServerOptions)")
    ap.add_argument("--malloc-arena-max", type=int, help="MALLOC_ARENA_MAX of the server (0: glibc's default)")
    ap.add_argument("--malloc-mmap-threshold", type=int,
                    help="MALLOC_MMAP_THRESHOLD_ of the server, bytes (0: glibc's default)")
    ap.add_argument("--tuning", action="append", default=[], metavar="KEY=VALUE",
                    help="a serving.repository.Tuning field of the repository built (repeatable)")
    ap.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                    help="an environment variable of the server process (repeatable)")
    ap.add_argument("--kill-test", action="store_true", help="then SIGKILL the server mid-burst (own server only)")
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request client timeout (s)")
    ap.add_argument("--record", action="store_true", help="save results into tools/reliability/results/load.json")
    ap.add_argument("--name", help="record name (default: load N x C)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rejudge", action="store_true",
                    help="only recompute the RSS verdicts of the recorded runs from their saved series")
    args = ap.parse_args(argv)
    if args.rejudge:
        import results_store

        results_store.merge(rejudged(results_store.load_all().get("load", {}), args.max_rss_growth,
                                     args.max_rss_growth_last_half))
        return 0

    from serving.client import SpaiClient
    from spai.errors import SPAIError

    if args.url and args.url.split(":")[0] not in ("127.0.0.1", "localhost", "[::1]"):
        print("error: --url must be a loopback address (127.0.0.1:PORT)", file=sys.stderr)
        return 1
    server = None
    # SIGTERM (e.g. `timeout`, `kill`) becomes SystemExit, so the finally block below stops the server we started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if args.url:
            url, pid = args.url, args.server_pid
        else:
            import torch

            import spai
            from export.onnx import onnx_from_torch
            from serving.repository import build_repository, tuning_with
            from serving.server import TritonServer

            work = Path(tempfile.mkdtemp(prefix="spai-load-"))
            repo = args.repository
            if not repo:
                torch.manual_seed(0)
                model = spai.create_model("spai-tiny")
                repo = build_repository(onnx_from_torch(model, work / "export").directory, "python-ort", work / "repo",
                                        tuning=tuning_with("python-ort", **parse_pairs(args.tuning, int_or_tuple)))
            os.environ.update(parse_pairs(args.server_env, str))
            server = TritonServer(repo, host="127.0.0.1", options=server_options(args)).start(timeout=300)
            url = server.http_url if args.protocol == "http" else server.grpc_url
            pid = server.process.pid

        def client_factory(retries: int = 0, timeout_s: float = args.timeout) -> SpaiClient:
            return SpaiClient(url, args.protocol, retries=retries, timeout_s=timeout_s)

        good, bad = make_payloads(args.seed)
        client = client_factory()
        sampler = rss_series.RssSampler(pid).start() if pid else None
        # warm-up: every size (each at full concurrency, so the batchers see full batches of it) and the bad
        # inputs, so that the server's arenas and caches reach their steady state before RSS is measured
        n_warm = max(args.warmup, 2 * args.concurrency * len(good))
        warm_items = [("good", *good[(i // args.concurrency) % len(good)]) for i in range(n_warm)]
        # then the load's own mix (another seed), until the heaps' high-water marks level off
        n_mixed = args.warmup_mixed if args.warmup_mixed >= 0 else int(0.15 * args.requests)
        warm_items += schedule(n_mixed, good, bad, args.bad_fraction, args.seed + 1)
        warm, _ = run_burst(client, warm_items + [("bad", *b) for b in bad], args.concurrency)
        if any(not o.ok for o in warm if o.kind == "good"):
            raise SPAIError(f"warm-up failed: {[o.error for o in warm if not o.ok][:2]}")
        if sampler:
            sampler.mark("load")
        outcomes, seconds = run_burst(client, schedule(args.requests, good, bad, args.bad_fraction, args.seed),
                                      args.concurrency)
        if sampler:
            sampler.mark("after")
            time.sleep(3)
            samples = sampler.stop()
        ready = (server.is_ready() if server else _ready(url)) if args.protocol == "http" or server else True
        result = summarise(outcomes, seconds)
        result.update({"concurrency": args.concurrency, "protocol": args.protocol, "ready_after": ready,
                       "warmup_requests": len(warm),
                       "server_options": server.options() if server is not None else None})
        if sampler:
            result.update(rss_fields(samples))
            series = args.rss_series or (args.record and rss_series_path(record_name(args)))
            if series:
                rss_series.save(samples, series, {"name": record_name(args), "requests": args.requests,
                                                  "concurrency": args.concurrency})
                result["rss_series"] = str(Path(series).resolve().relative_to(HERE)) \
                    if Path(series).resolve().is_relative_to(HERE) else str(series)
        if args.kill_test and server is not None:
            result["kill"] = kill_test(server, client_factory,
                                       schedule(max(4 * args.concurrency, 64), good, [], 0.0, args.seed + 2),
                                       args.concurrency)
    except SPAIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()

    failures = []
    if result["good_failures"]:
        failures.append(f"{result['good_failures']} good requests failed: {result['first_good_errors']}")
    if result["bad_accepted"]:
        failures.append(f"{result['bad_accepted']} bad requests were scored instead of refused")
    if not result["ready_after"]:
        failures.append("server not ready after the load")
    failures += rss_failures(result, args.max_rss_growth, args.max_rss_growth_last_half)
    kill = result.get("kill")
    if kill and (kill["after_kill_error"] == "unexpected success" or kill["hung"]):
        failures.append(f"kill test: {kill}")
    result["passed"] = not failures
    result["failures"] = failures
    print(json.dumps(result, indent=1))
    if args.record:
        import results_store

        results_store.merge([{"section": "load", "name": record_name(args), **result}])
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


def parse_pairs(pairs: list[str], convert) -> dict:
    """KEY=VALUE strings -> {KEY: convert(VALUE)}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: {pair!r} is not KEY=VALUE")
        out[key.strip().replace("-", "_") if convert is not str else key.strip()] = convert(value.strip())
    return out


def int_or_tuple(value: str) -> int | tuple[int, ...]:
    """'4' -> 4; '64,128' or '' -> a tuple (preferred batch sizes)."""
    return int(value) if value.isdigit() else tuple(int(v) for v in value.split(",") if v)


def server_options(args: argparse.Namespace):
    """ServerOptions from the --shm-*/--malloc-* flags (the defaults where not given)."""
    from serving.server import ServerOptions

    return ServerOptions.from_flags(args.shm_default_mb or None, args.shm_growth_mb or None, args.malloc_arena_max,
                                    args.malloc_mmap_threshold)


def record_name(args: argparse.Namespace) -> str:
    return args.name or f"{args.requests} requests x {args.concurrency} concurrent ({args.protocol})"


def rss_series_path(name: str) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return HERE / "results" / "rss" / f"{slug}.json"


def rss_fields(samples: list[dict]) -> dict:
    """The load record's RSS fields: total after warm-up / half-way / end, the two growths, per process."""
    summary = rss_series.growth_summary(samples)
    if not summary:
        return {"rss_growth": None}
    t = summary["total"]
    return {"rss_start_mb": t["start"], "rss_after_warmup_mb": t["after_warmup"], "rss_half_mb": t["half"],
            "rss_end_mb": t["end"], "rss_growth": t["growth"], "rss_growth_last_half": t["growth_last_half"],
            "rss_trend": t["trend"], "rss_trend_last_half": t["trend_last_half"],
            "rss_load_seconds": summary["load_seconds"], "rss_processes": summary["processes"], **pss_fields(summary)}


def pss_fields(summary: dict) -> dict:
    """The sum of PSS (every shared page counted once) after warm-up / half-way / end, where it was sampled."""
    pss = summary["total_pss"]
    if not pss["end"]:
        return {}
    return {"pss_total_mb": {k: pss[k] for k in ("start", "after_warmup", "half", "end")},
            "pss_growth": pss["growth"], "pss_growth_last_half": pss["growth_last_half"]}


def rejudged(records: dict[str, dict], max_growth: float, max_last_half: float) -> list[dict]:
    """The recorded load runs that kept their RSS series, with RSS fields, failures and verdict recomputed from
    the series by today's :func:`rss_fields` (the other failures and fields, and the date, kept)."""
    out = []
    for name, record in records.items():
        path = HERE / str(record.get("rss_series", ""))
        if not record.get("rss_series") or not path.is_file():
            continue
        fields = rss_fields(rss_series.load(path)[1])
        kept = [f for f in record.get("failures", []) if not f.startswith("server RSS")]
        failures = kept + rss_failures(fields, max_growth, max_last_half)
        out.append({**record, **fields, "section": "load", "name": name, "failures": failures,
                    "passed": not failures})
        print(f"{name}: RSS {fields['rss_growth']:+.1%}, last half {fields['rss_growth_last_half']:+.1%}: "
              f"{'pass' if not failures else 'FAIL'}")
    return out


def rss_failures(result: dict, max_growth: float, max_last_half: float) -> list[str]:
    """The RSS goals: growth after warm-up, and over the last half when the load lasted long enough to judge."""
    out = []
    growth, last_half = result.get("rss_growth"), result.get("rss_growth_last_half")
    if growth is not None and growth > max_growth:
        out.append(f"server RSS grew {growth:.1%} after warm-up (limit {max_growth:.0%})")
    long_enough = rss_series.last_half_judged(result.get("rss_load_seconds"))
    if long_enough and last_half is not None and last_half > max_last_half:
        out.append(f"server RSS grew {last_half:.1%} over the last half of the load (limit {max_last_half:.0%})")
    return out


def _ready(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
