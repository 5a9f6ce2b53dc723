"""``spai convert IN OUT``: any supported checkpoint (upstream, fork, bare CLIP/MFM, ours) -> our native format."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert an upstream / fork / CLIP checkpoint to spai-deploy's format")
    p.add_argument("input", help="checkpoint to read (spai.pth, ckpt_epoch_N.pth, CLIP or MFM weights, ours)")
    p.add_argument("output", help="native checkpoint to write (atomically)")
    p.add_argument("--model", help="model config for backbone-only inputs (bare CLIP: spai-fusion-b16, "
                                   "MFM pretrain: spai-mfm-b16); ignored when the input carries its own config")
    p.add_argument("--opt", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="config override, e.g. --opt MODEL.VIT.QUICK_GELU true (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import spai

    model, state = spai.load_checkpoint(args.input, name_or_cfg=args.model, overrides=[tuple(o) for o in args.opt])
    kept = {k: state[k] for k in ("epoch", "metrics", "source_format") if k in state}
    out = spai.save_checkpoint(model, args.output, **kept)
    n = sum(v.numel() for v in model.state_dict().values())
    print(f"wrote {out} ({state.get('source_format', 'native')} -> {model.cfg.MODEL.NAME}, MODEL_WEIGHTS "
          f"{model.cfg.MODEL_WEIGHTS}, {n:,} values)")
    return 0
