"""Fusion-fork checkpoints: strict import (text tower declared unused) and parity with its one-patch semantics."""

from __future__ import annotations

import pytest
import torch

import spai
from spai.errors import CheckpointError
from tests.spai.model.importers import reference
from tests.spai.model.importers.helpers import fork_config, fork_layout, save_original

# Tiny widths with P == D (64), so the fork's second-projection quirk type-checks, as in its PROJECTION_DIM 768 runs.
C = dict(depth=4, clip_heads=4, fre_heads=4, fusion_layers=[1, 3], layers=2)


def fork_checkpoint(tmp_path, with_config=True):
    sd = fork_layout(w=64, depth=4, p=64, s=32, gates=2, heads=4, embed=64, ratio=2)
    cfg = fork_config(64, 4, 64, 32, [1, 3], 4, 4, 64, 2) if with_config else None
    return save_original(tmp_path / "ckpt_epoch_9.pth", sd, cfg), sd


def test_fork_import_matches_one_patch_reference(tmp_path):
    path, sd = fork_checkpoint(tmp_path)
    model = spai.create_model(checkpoint=path)
    fre = model.cfg.MODEL.FRE
    assert fre.FORK_SECOND_PROJECTION and fre.EXTENDED_STATISTICS and model.cfg.MODEL.VIT.QUICK_GELU
    assert model.cfg.MODEL.VIT.MODEL == "spai-tiny-vit"
    img = torch.rand(3, 448, 448, generator=torch.Generator().manual_seed(5))
    (res,) = model.score_images([img], chunk_size=4)  # all 4 patches in one encoder call: no batch dependence
    ref = reference.fork_logit(img, sd, C)
    assert abs(res.logit - ref) < 1e-4, (res.logit, ref)


def test_fork_without_config_infers_switches(tmp_path):
    path, _ = fork_checkpoint(tmp_path, with_config=False)
    with pytest.raises(CheckpointError, match="early-fusion gates"):
        spai.create_model(checkpoint=path)  # 2 gates -> fork default [3, 6], invalid for 4 layers
    # the error names the fix; with 4 blocks the fork's [3, 6] default cannot be right


def test_fork_unknown_extra_key_is_listed(tmp_path):
    sd = fork_layout(w=64, depth=4, p=64, s=32, gates=2, heads=4, embed=64, ratio=2)
    sd["mfvit.features_processor.mystery.weight"] = torch.zeros(3)
    path = save_original(tmp_path / "bad.pth", sd, fork_config(64, 4, 64, 32, [1, 3], 4, 4, 64, 2))
    with pytest.raises(CheckpointError, match="mystery"):
        spai.create_model(checkpoint=path)
