"""``spai train``: train SPAI on CSV datasets (single process, or multi-GPU/multi-node under torchrun)."""

from __future__ import annotations

import argparse

from spai.train.calibration import DEFAULT_FPRS, DEFAULT_METHOD, METHODS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on SPAI-format CSV datasets (torchrun for several GPUs)")
    p.add_argument("--cfg", required=True, help="named config (spai-tiny, spai-fusion-b16, ...) or a YAML file")
    p.add_argument("--data", required=True, help="CSV (image,class,split); rows with split 'train' are used")
    p.add_argument("--val", help="validation CSV (split 'val'); default: the 'val' rows of --data")
    p.add_argument("--root", help="directory the CSV image paths are relative to (default: each CSV's folder)")
    p.add_argument("--output", required=True, help="run directory: checkpoints, metrics.csv/json, tensorboard/")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --output")
    p.add_argument("--opt", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="config override, e.g. --opt TRAIN.BASE_LR 1e-4 (repeatable)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default DATA.NUM_WORKERS)")
    p.add_argument("--epochs", type=int, help="shortcut for --opt TRAIN.EPOCHS N")
    p.add_argument("--batch-size", type=int, help="shortcut for --opt DATA.BATCH_SIZE N (per process)")
    p.add_argument("--calibration", choices=[*METHODS, "none"], default=DEFAULT_METHOD,
                   help="calibrate best.pth on the validation split at the end, as `spai calibrate` does "
                        f"(default {DEFAULT_METHOD}; none: leave it uncalibrated)")
    p.add_argument("--fpr", type=float, nargs="+", default=list(DEFAULT_FPRS), metavar="RATE",
                   help="target false-positive rates of best.pth's operating points (default: "
                        f"{' '.join(f'{f:g}' for f in DEFAULT_FPRS)})")
    p.add_argument("--strict", action="store_true", help="missing or unreadable images are errors, not skipped")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: the local GPU under torchrun, else CPU)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spai.model.config import get_config
    from spai.train import distributed as dist_utils
    from spai.train.trainer import TrainOptions, train

    overrides = list(map(tuple, args.opt))
    if args.epochs is not None:
        overrides.append(("TRAIN.EPOCHS", args.epochs))
    if args.batch_size is not None:
        overrides.append(("DATA.BATCH_SIZE", args.batch_size))
    cfg = get_config(args.cfg, overrides)
    opts = TrainOptions(cfg=cfg, data_csv=args.data, output=args.output, val_csv=args.val, root=args.root,
                        resume=args.resume, workers=args.workers, strict=args.strict, device=args.device,
                        progress=not args.no_progress,
                        calibration=None if args.calibration == "none" else args.calibration,
                        calibration_fprs=tuple(args.fpr))
    try:
        history = train(opts)
    finally:
        dist_utils.cleanup()
    if history and dist_utils.rank() == 0:
        last = history[-1]
        print(f"done: {len(history)} epoch(s); last val_auc {last.get('val_auc')}, checkpoints in {args.output}")
    return 0
