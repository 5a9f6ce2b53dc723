"""``spai convert IN OUT``: any supported checkpoint (upstream, fork, bare CLIP/MFM, ours) -> our native format."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    from spai.checkpoint import NATIVE_FORMAT, load_state_dict_strict, read_checkpoint_file
    from spai.config import get_config
    from spai.factory import build_backbone
    from spai.models.spai_model import SPAIModel

    data = read_checkpoint_file(args.input)  # read once: released checkpoints are ~900 MB
    if data.get("format") != NATIVE_FORMAT:
        from spai.importers import import_foreign_checkpoint

        data = import_foreign_checkpoint(data, Path(args.input), args.model)
    cfg = get_config(data["config"], [tuple(o) for o in args.opt])
    model = SPAIModel(cfg, build_backbone(cfg, None))
    load_state_dict_strict(model, data["model"], args.input)
    state = {k: data[k] for k in ("epoch", "metrics", "source_format") if k in data}
    out = spai.save_checkpoint(model, args.output, **state)
    n = sum(v.numel() for v in model.state_dict().values())
    print(f"wrote {out} ({data.get('source_format', 'native')} -> {cfg.MODEL.NAME}, MODEL_WEIGHTS "
          f"{cfg.MODEL_WEIGHTS}, {n:,} values)")
    return 0
