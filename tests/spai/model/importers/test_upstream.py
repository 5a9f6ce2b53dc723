"""Upstream SPAI checkpoints (mever-team/spai spai.pth layout): detection, strict loading, numerical parity."""

from __future__ import annotations

import torch

import spai
from spai.model.importers.detect import UPSTREAM, detect_format
from tests.spai.model.importers import reference
from tests.spai.model.importers.helpers import save_original, upstream_config, upstream_layout

TINY = dict(w=64, depth=4, p=48, heads=4, embed=64, ratio=2)


def tiny_checkpoint(tmp_path, with_config: bool = True):
    sd = upstream_layout(**TINY)
    cfg = upstream_config(64, 4, 4, 48, 4, 64, 2) if with_config else None
    return save_original(tmp_path / "ckpt_epoch_9.pth", sd, cfg), sd


def test_full_size_layout_324_keys_loads_strictly(tmp_path):
    sd = upstream_layout()
    assert len(sd) == 324
    assert sum(v.numel() for v in sd.values()) == 139_945_243  # spai-upstream.md §5
    assert detect_format(sd, "x") == UPSTREAM
    from spai.model.importers import import_foreign_checkpoint

    out = import_foreign_checkpoint({"model": sd, "config": upstream_config(768, 12, 12, 1024, 12, 1536, 3)},
                                    tmp_path / "spai.pth")
    model = spai.create_model(out["config"])
    own = model.state_dict()
    assert set(own) == set(out["model"]) and all(own[k].shape == out["model"][k].shape for k in own)
    assert len(set(sd) - set(own)) == 43  # the declared-unused ViT tensors


def test_tiny_upstream_matches_plain_reference(tmp_path):
    path, sd = tiny_checkpoint(tmp_path)
    model = spai.create_model(checkpoint=path)
    assert model.cfg.MODEL_WEIGHTS == "mfm" and model.cfg.MODEL.VIT.EMBED_DIM == 64
    img = torch.rand(3, 448, 460, generator=torch.Generator().manual_seed(3))
    (res,) = model.score_images([img])
    ref = reference.upstream_logit(img, sd, depth=4, vit_heads=4)
    assert res.num_patches == 4
    assert abs(res.logit - ref) < 1e-4, (res.logit, ref)


def test_config_unreadable_infers_from_shapes(tmp_path, caplog):
    path, sd = tiny_checkpoint(tmp_path, with_config=False)
    with caplog.at_level("WARNING"):
        model, state = spai.load_checkpoint(path)
    assert "inferred the architecture from tensor shapes" in caplog.text
    assert state["epoch"] == 9 and state["source_format"] == UPSTREAM
    vit = model.cfg.MODEL.VIT
    assert (vit.EMBED_DIM, vit.DEPTH, vit.NUM_HEADS, vit.PROJECTION_DIM) == (64, 4, 1, 48)
    # heads are not stored in tensors: with the config missing the guess (width / 64) differs -> numbers differ,
    # but every dimension that shapes carry is right and the load is strict.
    assert model.cfg.MODEL.PATCH_VIT.NUM_HEADS == 4 and model.cfg.MODEL.CLS_HEAD.MLP_RATIO == 2
