"""``spai calibrate``: fit a checkpoint's probabilities (temperature or Platt scaling) and its operating points
(one threshold per target false-positive rate, plus best balanced accuracy) on labelled images; write a copy of
the checkpoint with the ``calibration`` entry. Nothing is written when the data cannot calibrate."""

from __future__ import annotations

import argparse
from pathlib import Path

from spai.lazy import lazy_import
from spai.train.calibration import DEFAULT_FPRS, DEFAULT_METHOD, METHODS
from spai_cli.routes import scoring_route
from spai_cli.test import add_scoring_arguments

torch = lazy_import("torch")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="calibrate a checkpoint on labelled images: calibrated probabilities and "
                                         "operating points at target false-positive rates")
    p.add_argument("--model", required=True, help="checkpoint (ours, upstream spai.pth, fork ckpt_epoch_N.pth) or a "
                                                  "training run directory (uses best.pth)")
    p.add_argument("--csv", required=True, help="labelled CSV (image,class,split; class 1 = AI-generated)")
    p.add_argument("--split", default="val", help="rows to use: val (default), test, train or all")
    p.add_argument("--fpr", type=float, nargs="+", default=list(DEFAULT_FPRS), metavar="RATE",
                   help="target false-positive rates, one operating point each (1/RATE real images needed); the "
                        "first that can be set is the default (default: "
                        f"{' '.join(f'{f:g}' for f in DEFAULT_FPRS)})")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help=f"temperature (one scalar) or platt (temperature and bias; default {DEFAULT_METHOD})")
    p.add_argument("-o", "--output", required=True, help="the calibrated checkpoint to write (may be --model itself)")
    add_scoring_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    import spai
    from spai.errors import CheckpointError
    from spai.train.calibration import calibrated_checkpoint_from_checkpoint, calibration_summary
    from spai.train.testing import calibration_entry, labelled_scores, resolve_model_path

    output = Path(args.output)
    if output.is_dir():
        raise CheckpointError(f"-o {output} is a directory; give the checkpoint file to write, e.g. "
                              f"{output / 'calibrated.pth'}.")
    checkpoint = resolve_model_path(args.model)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = spai.create_model(None, checkpoint=checkpoint, device=device)
    with scoring_route(args, model) as route:
        _, scores, missing = labelled_scores(model, Path(args.csv), args.split, args.root, args.strict,
                                             args.batch_size, args.workers, not args.no_progress, "calibrate", route)
    entry = calibration_entry(scores, args.csv, args.split, args.method, args.fpr)
    entry["checkpoint"] = str(checkpoint)
    print(calibration_summary(entry) + (f"\n({missing} missing and {len(scores['errors'])} unreadable images "
                                        "skipped)" if missing or scores["errors"] else ""))
    print(f"wrote {calibrated_checkpoint_from_checkpoint(checkpoint, output, entry)}")
    return 0
