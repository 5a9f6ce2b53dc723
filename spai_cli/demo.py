"""``spai demo``: the whole chain on a machine with no GPU, through the same commands a user runs.

proxy data -> train spai-tiny briefly (best.pth calibrated on the proxy validation split: probabilities and an
operating point at 5% FPR) -> export (ONNX + the int8 CPU graph + parity + calibration; TensorRT skipped where
absent) -> python-ort Triton repository serving the CPU route that passed (int8 where its gate passed on this CPU
and it is faster here, else fp32) -> bundled tritonserver -> score proxy test images, the shared samples and ``--images DIR`` ->
table (probability, decision) + accuracy at the operating point + CSV + heatmaps -> stop the server. Each step
prints its command, so users can repeat any of them.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from export.cli import EXIT_TRT_UNAVAILABLE
from spai.errors import AccuracyError, SPAIError

ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLES = ROOT.parent / "shared" / "data" / "samples"  # beside a checkout; absent for a wheel install
DEMO_SOURCES = 140  # proxy sources (2 images each; about 10 s): 21 real validation images, >= 1 / DEMO_FPR
DEMO_EPOCHS = 7  # about 2 minutes of CPU training; best validation loss about 0.04 (chance: 0.69), AUC 1.0
DEMO_FPR = 0.05  # the operating point best.pth is calibrated at on the validation split
NOTICE = ("NOTE: the demo model is spai-tiny trained for a few minutes on the PROXY dataset (synthetic images): "
          "it demonstrates the toolchain; its scores on real photographs mean nothing.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole chain end to end on CPU (proxy data -> train -> export -> serve)")
    p.add_argument("--images", help="also score the images in this folder")
    p.add_argument("--output", default="demo_output", help="working folder (default: demo_output)")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help=f"training epochs (default {DEMO_EPOCHS})")
    p.set_defaults(func=run)


def _spai(args: list[str]) -> list[str]:
    """The command line of ``spai ARGS`` run with this interpreter."""
    return [sys.executable, "-m", "spai_cli", *args]


def _step(title: str, args: list[str], ok: tuple[int, ...] = (0,)) -> int:
    """Print ``$ spai ARGS`` and run it; its exit code must be one of ``ok``."""
    print(f"\n== {title}\n$ spai {' '.join(args)}", flush=True)
    code = subprocess.run(_spai(args)).returncode
    if code not in ok:
        raise SPAIError(f"demo step '{title}' failed with exit code {code} (see its output above).")
    return code


REDUCED_ROUTES = ("ort-fp16/", "trt-fp16/", "ort-int8/")  # gates the demo may fail: it serves fp32 instead


def _continue_without_fp16(export: Path) -> None:
    """After a failed parity gate: go on only if every failure is a reduced-precision graph's (the TensorRT FP16
    input, which this CPU demo does not serve, or the int8 CPU graph, which the repository then leaves out: its
    verdict is in route_evidence.json); the FP32 graphs must have passed."""
    import json

    failures = json.loads((export / "export_report.json").read_text()).get("failures", [])
    if not failures or any(not f.startswith(REDUCED_ROUTES) for f in failures):
        raise SPAIError(f"demo step 'export' failed its parity gates: {failures} (see {export / 'export_report.md'}).")
    print(f"\nA reduced-precision graph failed its gate ({'; '.join(failures)}; `spai export` exits 3): build no "
          "TensorRT FP16 engine from this checkpoint without re-checking it, and serve int8 only where it passed. "
          "This CPU demo serves the routes that passed.", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SPAIError(f"the Triton server exited early with code {proc.returncode} (see its output above).")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SPAIError(f"the Triton server was not ready after {timeout:.0f} s.")


def _score_sets(out: Path, images: str | None) -> list[tuple[str, str]]:
    sets = [("proxy test images", str(out / "proxy" / "test_images"))]
    if SHARED_SAMPLES.is_dir():
        sets.append(("shared samples", str(SHARED_SAMPLES)))
    if images:
        sets.append(("your images", images))
    return sets


def _proxy_test_dir(out: Path) -> Path:
    """Symlink the proxy dataset's test split into one folder (what `spai score DIR` takes)."""
    target = out / "proxy" / "test_images"
    target.mkdir(parents=True, exist_ok=True)
    with open(out / "proxy" / "data.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == "test":
                link = target / Path(row["image"]).name
                if not link.exists():
                    link.symlink_to((out / "proxy" / row["image"]).resolve())
    return target


def _print_results(csv_path: Path, title: str) -> None:
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    print(f"\n-- {title}: {csv_path}")
    print(f"{'image':<44} {'probability':>11} {'decision':>9} {'patches':>7} {'latency ms':>10}")
    for r in rows:
        prob = r.get("probability") or "error"
        prob = f"{float(prob):.4f}" if prob != "error" else prob
        decision = {"1": "AI-gen", "0": "real"}.get(r.get("decision", ""), "")
        print(f"{Path(r['image']).name[:44]:<44} {prob:>11} {decision:>9} {r.get('num_patches', ''):>7} "
              f"{float(r.get('latency_ms') or 0):>10.1f}" + (f"  {r['error']}" if r.get("error") else ""))


def _print_proxy_accuracy(csv_path: Path) -> None:
    """Proxy file names say the class (``*_fake.png`` = 1): the served model's AUC, and its accuracy, FPR and TPR
    at the calibrated operating point (the ``decision`` column), beside accuracy at probability 0.5."""
    from sklearn.metrics import roc_auc_score

    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("probability")]
    labels = [int(Path(r["image"]).stem.endswith("_fake")) for r in rows]
    if len(set(labels)) < 2:
        return
    probs = [float(r["probability"]) for r in rows]
    flagged = [r["decision"] == "1" for r in rows]
    real = [f for f, y in zip(flagged, labels) if y == 0]
    fake = [f for f, y in zip(flagged, labels) if y == 1]
    accuracy = sum(f == bool(y) for f, y in zip(flagged, labels)) / len(rows)
    at_half = sum((p >= 0.5) == bool(y) for p, y in zip(probs, labels)) / len(rows)
    print(f"proxy test set through Triton ({len(rows)} images, not used for training or calibration): "
          f"AUC {roc_auc_score(labels, probs):.3f}; accuracy {accuracy:.3f} at operating point "
          f"{rows[0]['operating_point']} (flagged {sum(real)}/{len(real)} real = FPR {sum(real) / len(real):.3f}, "
          f"{sum(fake)}/{len(fake)} AI-generated = TPR {sum(fake) / len(fake):.3f}); accuracy {at_half:.3f} at "
          "calibrated probability 0.5")


def _serve_and_score(out: Path, repo: Path, images: str | None) -> None:
    http, grpc, metrics = _free_port(), _free_port(), _free_port()
    cmd = ["serve", "--repository", str(repo), "--http-port", str(http), "--grpc-port", str(grpc),
           "--metrics-port", str(metrics)]
    print(f"\n== start the Triton server\n$ spai {' '.join(cmd)}", flush=True)
    server = subprocess.Popen(_spai(cmd), start_new_session=True)
    try:
        _wait_ready(f"http://127.0.0.1:{http}", server)
        for title, folder in _score_sets(out, images):
            csv_out = out / "scores" / (title.replace(" ", "_") + ".csv")
            heatmaps = out / "heatmaps" / title.replace(" ", "_")
            _step(f"score {title}", ["score", folder, "--url", f"127.0.0.1:{http}", "--concurrency", "4",
                                     "--heatmaps", str(heatmaps), "-o", str(csv_out)])
            _print_results(csv_out, title)
            if title == "proxy test images":
                _print_proxy_accuracy(csv_out)
    finally:
        print("\n== stop the Triton server", flush=True)
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output).resolve()
    print(NOTICE)
    _step("generate the proxy dataset", ["data", "proxy", "--output", str(out / "proxy"), "--n", str(DEMO_SOURCES)])
    _step("train spai-tiny on the proxy data; calibrate best.pth on the validation split",
          ["train", "--cfg", "spai-tiny", "--data", str(out / "proxy" / "data.csv"), "--output", str(out / "train"),
           "--workers", "1", "--epochs", str(args.epochs), "--fpr", f"{DEMO_FPR:g}", "--no-progress"])
    export = ["export", str(out / "train" / "best.pth"), "-o", str(out / "export"), "--precision", "int8"]
    if SHARED_SAMPLES.is_dir():
        export += ["--check-images", str(SHARED_SAMPLES)]
    # exit code 4: TensorRT / GPU absent; the ONNX files and their parity report are written
    code = _step("export ONNX + TensorRT", export, ok=(0, EXIT_TRT_UNAVAILABLE, AccuracyError.exit_code))
    if code == AccuracyError.exit_code:
        _continue_without_fp16(out / "export")
    repo = out / "triton_repository"
    _step("build the CPU (python-ort) Triton repository of the route that passed its gate here",
          ["repository", "--artifacts", str(out / "export"), "--variant", "python-ort", "--precision", "auto",
           "-o", str(repo)])
    _proxy_test_dir(out)
    _serve_and_score(out, repo, args.images)
    print(f"\nDone. Scores: {out / 'scores'}  Heatmaps: {out / 'heatmaps'}  Export report: "
          f"{out / 'export' / 'export_report.md'}\nCalibrate on labelled data of your own (1/FPR real images per "
          f"target): spai calibrate --model {out / 'train' / 'best.pth'} --csv YOUR.csv --split all --fpr 0.01 "
          f"-o calibrated.pth\n{NOTICE}")
    return 0
