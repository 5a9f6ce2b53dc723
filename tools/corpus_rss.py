"""Client peak RSS of ``spai predict`` and ``spai score`` on corpora of N small images (issue 23): the peak must not
grow with the corpus (within 10 % from the smallest N to the largest).

    .venv/bin/python tools/corpus_rss.py [--sizes 2000 20000] [--commands predict score] [--json /tmp/rss.json]

For each N the tool writes N distinct 64x64 images (PNG and JPEG alternately) into ``--workdir`` (default: a
temporary folder), then runs each command as a child process with ``-o scores.csv`` / ``-o scores.parquet`` and
reads that child's own peak RSS (``ru_maxrss`` of ``os.wait4`` on its pid). Both commands score the same
spai-tiny export (random weights, ``spai export spai-tiny --onnx-only``): ``spai predict --backend ort --onnx DIR``
in-process, ``spai score`` against the bundled tritonserver (:class:`serving.server.TritonServer` on 127.0.0.1
serving the python-ort repository of ``spai repository``, as tests/spai_cli/test_score_corpus.py does). Each output
is checked to hold exactly N rows, one per image, none failed.

Linux counts the parent's RSS at the spawn into a child's ``ru_maxrss`` (exec keeps the old memory's high-water
mark), so this process stays small: the export, the repository and the row counts run as children too, and a
child's peak at or below this process's own is refused as unmeasurable. Prints a table; ``--json`` keeps the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SUFFIX = {"csv": ".csv", "parquet": ".parquet"}


MAKE_IMAGES = """import sys; from pathlib import Path; import numpy as np; from PIL import Image
folder, n = Path(sys.argv[1]), int(sys.argv[2]); folder.mkdir(parents=True, exist_ok=True)
for i in range(n):
    path = folder / f"img{i:06d}.{'png' if i % 2 == 0 else 'jpg'}"
    if not path.exists():
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)"""


def make_images(folder: Path, n: int) -> Path:
    """``n`` distinct 64x64 noise images (even index PNG, odd JPEG) in ``folder`` (those already there kept),
    written by a child: numpy and PIL stay out of this process."""
    subprocess.run([sys.executable, "-c", MAKE_IMAGES, str(folder), str(n)], check=True)
    return folder


def child_env(workdir: Path) -> dict[str, str]:
    """The project importable, quiet warnings, two threads, the route cache inside ``workdir``."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", SPAI_CACHE_DIR=str(workdir / "cache"))
    env["PYTHONPATH"] = os.pathsep.join(x for x in [str(ROOT), env.get("PYTHONPATH", "")] if x)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def self_peak_mib() -> float:
    """This process's own peak RSS (MiB): the floor of every child's ``ru_maxrss``."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_child(argv: list[str], log: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run ``python ARGV`` (output into ``log``); (its own peak RSS in MiB, wall seconds). Raises when it fails
    or when its peak is not above this process's (then it was not measured)."""
    start, floor = time.monotonic(), self_peak_mib()
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, *argv], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} exited {proc.returncode}; log {log}:\n{log.read_text()[-3000:]}")
    if usage.ru_maxrss / 1024 <= floor:
        raise RuntimeError(f"{argv[:3]}: peak {usage.ru_maxrss / 1024:.1f} MiB not above this process's {floor:.1f}")
    return usage.ru_maxrss / 1024, time.monotonic() - start


ROW_CHECK = """import sys; from spai.corpus.writers import iter_score_records as it
records = list(it(sys.argv[1])); print(len(records), len({r["image"] for r in records}), sum(bool(r["error"])
for r in records))"""


def check_rows(out: Path, n: int, env: dict[str, str]) -> int:
    """Rows in ``out`` (duplicates included; read in a child, pyarrow stays out of this process); raises unless
    exactly ``n``, one per image, none failed."""
    text = subprocess.run([sys.executable, "-c", ROW_CHECK, str(out)], capture_output=True, text=True, env=env,
                          cwd=ROOT, check=True).stdout
    rows, images, failed = map(int, text.split())
    if (rows, images, failed) != (n, n, 0):
        raise RuntimeError(f"{out}: {rows} rows, {images} images, {failed} failed; wanted {n}")
    return rows


def make_export(workdir: Path, env: dict[str, str]) -> Path:
    """``spai export spai-tiny --onnx-only`` (random weights) into ``workdir/onnx``."""
    run_child(["-m", "spai_cli", "export", "spai-tiny", "-o", str(workdir / "onnx"), "--onnx-only"],
              workdir / "export.log", env)
    return workdir / "onnx"


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    """Poll ``url``'s /v2/health/ready until it answers 200; raises if ``proc`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the server at {url} did not get ready; log {log}:\n{log.read_text()[-3000:]}")


@contextmanager
def bundled_server(export: Path, workdir: Path, env: dict[str, str]) -> Iterator[str]:
    """``spai repository --variant python-ort`` of ``export``, served by ``spai serve`` (the bundled tritonserver,
    :class:`serving.server.TritonServer`) on 127.0.0.1, in a child; yields its HTTP address."""
    from serving.server import free_port  # serving.server alone is light; TritonServer imports pytriton

    repo, log = workdir / "repo", workdir / "serve.log"
    run_child(["-m", "spai_cli", "repository", "--artifacts", str(export), "--variant", "python-ort", "-o",
               str(repo)], workdir / "repository.log", env)
    ports = [str(free_port()) for _ in range(3)]
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "spai_cli", "serve", "--repository", str(repo), "--host",
                                 "127.0.0.1", "--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port",
                                 ports[2]], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        wait_ready(f"127.0.0.1:{ports[0]}", proc, log)
        yield f"127.0.0.1:{ports[0]}"
    finally:
        proc.terminate()  # spai serve stops tritonserver and its stubs on SIGTERM
        proc.wait(60)


def command_argv(command: str, images: Path, out: Path, export: Path, url: str | None) -> list[str]:
    """The command line of one run (no progress bar, the defaults otherwise)."""
    common = [str(images), "-o", str(out), "--no-progress"]
    if command == "predict":
        return ["predict", *common, "--model", "spai-tiny", "--backend", "ort", "--precision", "fp32",
                "--onnx", str(export)]
    return ["score", *common, "--url", str(url)]


def with_growth(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's growth in % over the smallest N of the same command and format."""
    for row in rows:
        base = min((r for r in rows if (r["command"], r["format"]) == (row["command"], row["format"])),
                   key=lambda r: r["n"])
        row["growth_pct"] = round(100 * (row["peak_rss_mib"] / base["peak_rss_mib"] - 1), 2)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """N, command, format, rows written, peak RSS (MiB), growth (%), wall seconds."""
    print(f"{'N':>7} {'command':<8} {'format':<8} {'rows':>7} {'peak RSS MiB':>12} {'growth %':>9} {'wall s':>8}")
    for r in rows:
        print(f"{r['n']:>7} {r['command']:<8} {r['format']:<8} {r['rows']:>7} {r['peak_rss_mib']:>12.1f} "
              f"{r['growth_pct']:>9.2f} {r['wall_s']:>8.1f}")


def measure(args: argparse.Namespace, workdir: Path, export: Path, command: str, url: str | None,
            rows: list[dict[str, Any]]) -> None:
    """Every N and format of ``command``: run it, check its rows, append the figures to ``rows``."""
    env = child_env(workdir)
    for n in args.sizes:
        images = make_images(workdir / f"images-{n}", n)
        for fmt in args.formats:
            out = workdir / f"{command}-{n}{SUFFIX[fmt]}"
            if out.is_dir():  # Parquet: a folder of parts
                shutil.rmtree(out)
            out.unlink(missing_ok=True)
            argv = command_argv(command, images, out, export, url)
            peak, wall = run_child(["-m", "spai_cli", *argv], workdir / f"{command}-{n}-{fmt}.log", env)
            rows.append({"n": n, "command": command, "format": fmt, "rows": check_rows(out, n, env),
                         "peak_rss_mib": round(peak, 1), "wall_s": round(wall, 1),
                         "tool_peak_rss_mib": round(self_peak_mib(), 1), "argv": argv})
            print(f"{command} {fmt} N={n}: {peak:.1f} MiB, {wall:.1f} s", file=sys.stderr, flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(with_growth(rows), indent=1) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000], help="corpus sizes N")
    ap.add_argument("--commands", nargs="+", choices=["predict", "score"], default=["predict", "score"])
    ap.add_argument("--formats", nargs="+", choices=list(SUFFIX), default=list(SUFFIX))
    ap.add_argument("--workdir", help="images, export, outputs and logs (default: a temporary folder, removed)")
    ap.add_argument("--json", help="write the rows here as JSON (after each run)")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="corpus-rss-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        export = make_export(workdir, child_env(workdir))
        if "predict" in args.commands:
            measure(args, workdir, export, "predict", None, rows)
        if "score" in args.commands:
            with bundled_server(export, workdir, child_env(workdir)) as url:
                measure(args, workdir, export, "score", url, rows)
    print_table(with_growth(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
