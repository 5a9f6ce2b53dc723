"""Which open_clip model config a CLIP vision state dict belongs to (from its shapes)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from spai.errors import CheckpointError

CANDIDATES = ("ViT-B-16", "spai-tiny-vit", "ViT-B-32", "ViT-L-14")


def clip_model_name(visual: Mapping[str, torch.Tensor]) -> tuple[str, int, int]:
    """(open_clip model name, width, depth) matching ``visual.*`` tensors; error if none matches."""
    from spai.model.nn.backbone import _import_open_clip

    open_clip = _import_open_clip()
    conv = visual["visual.conv1.weight"]
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    depth = len({m.group(1) for k in visual if (m := re.match(r"visual\.transformer\.resblocks\.(\d+)\.", k))})
    out_dim = int(visual["visual.proj"].shape[1]) if "visual.proj" in visual else None
    for name in CANDIDATES:
        cfg = open_clip.get_model_config(name)
        v = cfg["vision_cfg"]
        if (v["width"], v["layers"], v["patch_size"], cfg["embed_dim"]) == (width, depth, patch, out_dim):
            return name, width, depth
    raise CheckpointError(f"CLIP vision weights of width {width}, {depth} blocks, patch {patch}, output {out_dim} "
                          f"match none of the supported open_clip models ({', '.join(CANDIDATES)}).")
