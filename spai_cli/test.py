"""``spai test``: score SPAI-format CSVs with a checkpoint; per-image scores, metrics (AUC, AP, accuracy at 0.5
and at each operating point, TPR at 1% / 5% FPR with bootstrap intervals, ECE, Brier), ROC curves and
reliability diagrams."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spai.lazy import lazy_import
from spai_cli.routes import add_route_arguments, scoring_route

torch = lazy_import("torch")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("test", help="evaluate a checkpoint on SPAI-format CSV datasets (AUC, AP, operating points, "
                       "calibration, ROC)")
    p.add_argument("--model", required=True, help="checkpoint file or training run directory (uses best.pth)")
    p.add_argument("--csv", required=True, action="append", help="test CSV (image,class,split); repeatable")
    p.add_argument("--output", required=True,
                   help="directory for <csv>_scores.csv, <csv>_metrics.json, ROC and reliability PNGs")
    p.add_argument("--split", default="test", help="rows to use: test (default), val, train or all")
    add_scoring_arguments(p)
    p.set_defaults(func=run)


def add_scoring_arguments(p: argparse.ArgumentParser) -> None:
    """How a labelled CSV is scored (``spai test`` and ``spai calibrate``)."""
    p.add_argument("--root", help="directory the image paths are relative to (default: each CSV's folder)")
    p.add_argument("--batch-size", type=int, default=8, help="images per scoring call (default 8)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    p.add_argument("--strict", action="store_true", help="missing or unreadable images are errors")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    add_route_arguments(p)  # the route the images are scored through (default: the model itself)


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def print_metrics(name: str, m: dict) -> None:
    """One CSV's results: the ranking, each operating point, TPR at fixed FPRs, calibration error."""
    auc = "undefined (one class)" if m["auc"] is None else f"{m['auc']:.4f}"
    print(f"{name}: n={m['n']} AUC {auc} AP {_num(m['ap'])} acc@0.5 {_num(m['acc'])} loss {_num(m['loss'])}"
          + (f" ({m['errors'] + m['missing']} skipped)" if m["errors"] + m["missing"] else ""))
    if "operating_points" not in m:
        return
    print(f"  probabilities: {'calibrated (' + m['calibration_method'] + ')' if m['calibrated'] else 'uncalibrated'}"
          f"; ECE {m['ece']:.4f} Brier {m['brier']:.4f} NLL {m['nll']:.4f}")
    for p in m["operating_points"]:
        default = " (default)" if p["name"] == m["default_operating_point"] else ""
        print(f"  {p['name']}{default}: threshold {p['threshold']:.4g} acc {p['accuracy']:.4f} "
              f"FPR {_num(p['fpr'])}{_ci(p['fpr_ci'])} TPR {_num(p['tpr'])}{_ci(p['tpr_ci'])}")
    for target, t in m["tpr_at_fpr"].items():
        print(f"  TPR at {float(target) * 100:g}% FPR: " + (f"{t['tpr']:.4f}{_ci(t['tpr_ci'])}" if t["tpr"] is not None
                                                       else f"n/a ({t['reason']})"))


def run(args: argparse.Namespace) -> int:

    import spai
    from spai.errors import DataError
    from spai.train.testing import resolve_model_path, test_csv, unique_names

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = resolve_model_path(args.model)
    model = spai.create_model(None, checkpoint=checkpoint, device=device)
    output = Path(args.output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"Cannot create output directory {output}: {e.strerror}.") from e
    paths = [Path(c) for c in args.csv]
    summary = {}
    with scoring_route(args, model) as route:
        for path, name in zip(paths, unique_names(paths)):
            m = test_csv(model, path, output, name, args.split, args.root, args.strict, args.batch_size,
                         args.workers, not args.no_progress, route)
            summary[name] = m
            print_metrics(name, m)
    (output / "metrics.json").write_text(json.dumps({"checkpoint": str(checkpoint), "results": summary}, indent=2))
    print(f"wrote scores, metrics, ROC curves and reliability diagrams to {output}")
    return 0
