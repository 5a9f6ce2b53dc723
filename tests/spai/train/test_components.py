"""Losses, schedule, stage parameter selection, metrics and RNG state round trips."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from spai.errors import ConfigError
from spai.model.config import get_config
from spai.train.losses import focal_loss, frequency_consistency, semantic_consistency, total_loss
from spai.train.metrics import binary_metrics
from spai.train.params import is_fusion_param, param_groups, set_stage, trainable_names
from spai.train.schedule import CosineWarmupSchedule
from spai.train.state import capture_rng, restore_rng


def test_focal_matches_plain_formula() -> None:
    logits, labels = torch.tensor([2.0, -1.0, 0.3, -3.0]), torch.tensor([1.0, 0.0, 0.0, 1.0])
    alpha, gamma, expected = 0.25, 2.0, []
    for z, y in zip(logits.tolist(), labels.tolist()):
        p = 1 / (1 + math.exp(-z))
        pt, at = (p, alpha) if y == 1 else (1 - p, 1 - alpha)
        expected.append(-at * (1 - pt) ** gamma * math.log(pt))
    assert focal_loss(logits[:, None], labels, alpha, gamma).item() == pytest.approx(np.mean(expected), rel=1e-5)


def test_consistency_losses() -> None:
    same = torch.randn(1, 5, 8).expand(3, -1, -1)
    assert semantic_consistency(same).item() == pytest.approx(-1.0, abs=1e-5)
    assert frequency_consistency(same * torch.tensor([1.0, 2.0, 3.0])[:, None, None]).item() == pytest.approx(-1.0)
    opposite = torch.stack([same[0], -same[0], same[0]])
    assert frequency_consistency(opposite).item() == pytest.approx(0.0, abs=1e-6)
    assert semantic_consistency(opposite).item() == pytest.approx(1 / 3, abs=1e-5)


def test_total_loss_weights() -> None:
    cfg = get_config("spai-tiny", [("TRAIN.LOSS", "bce")])
    logits, labels = torch.zeros(2, 1), torch.tensor([0.0, 1.0])
    aux = {"semantic_views": torch.ones(3, 2, 4), "view_means": torch.ones(3, 2, 4)}
    loss, parts = total_loss(cfg, logits, labels, aux)
    expected = math.log(2) - cfg.TRAIN.SEMANTIC_CONSISTENCY_WEIGHT - cfg.TRAIN.FREQUENCY_CONSISTENCY_WEIGHT
    assert loss.item() == pytest.approx(expected, rel=1e-5) and set(parts) == {"cls", "sem", "freq"}
    with pytest.raises(ConfigError):
        total_loss(get_config("spai-tiny", [("TRAIN.LOSS", "hinge")]), logits, labels, {})


def test_cosine_schedule_with_warmup() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    s = CosineWarmupSchedule(opt, base_lr=1.0, total_steps=10, warmup_steps=2, warmup_lr=0.0, min_lr=0.1)
    lrs = [s.step() for _ in range(10)]
    assert lrs[0] == 0.0 and lrs[1] == 0.5 and lrs[2] == 1.0
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and s.lr_at(10) == pytest.approx(0.1)
    assert opt.param_groups[0]["lr"] == lrs[-1]
    s2 = CosineWarmupSchedule(opt, 1.0, 10)
    s2.load_state_dict(s.state_dict())
    assert s2.step() == s.step()


def test_stage_parameter_selection(tiny_model) -> None:
    import copy

    model = copy.deepcopy(tiny_model)
    stage1 = set_stage(model, 1)
    assert stage1 and all(is_fusion_param(n) for n in stage1)
    assert any(".hierarchical_fusion." in n for n in stage1) and not any("patch_projector" in n for n in stage1)
    stage2 = set_stage(model, 2)
    assert set(stage1) < set(stage2) and not any(n.startswith("mfvit.vit.") for n in stage2)
    assert all(not p.requires_grad for p in model.mfvit.vit.parameters())
    groups = param_groups(model, 0.05)
    assert all(p.ndim > 1 for p in groups[0]["params"]) and groups[1]["weight_decay"] == 0.0


def test_stage1_without_fusion_trains_everything(caplog) -> None:
    import spai

    cfg = {k: v for k, v in get_config("spai-tiny").items()}
    model = spai.create_model(cfg, overrides=[("MODEL.FRE.EARLY_FUSION_LAYERS", []),
                                              ("MODEL.FRE.USE_FREQUENCY_AWARE_ATTENTION", False),
                                              ("MODEL.FRE.USE_CROSS_ATTENTION", False),
                                              ("MODEL.FRE.USE_HIERARCHICAL_FUSION", False)])
    with caplog.at_level("INFO", logger="spai.train"):
        names = set_stage(model, 1)
    assert names == sorted(trainable_names(model, 2))
    assert "no fusion components" in caplog.text


def test_metrics_one_class_auc_undefined() -> None:
    m = binary_metrics(np.array([1, 1, 1]), np.array([0.2, 0.7, 0.9]))
    assert m["auc"] is None and m["acc"] == pytest.approx(2 / 3) and m["ap"] == pytest.approx(1.0)
    both = binary_metrics(np.array([0, 1]), np.array([0.2, 0.7]))
    assert both["auc"] == 1.0


def test_rng_round_trip(tmp_path) -> None:
    state = capture_rng()
    torch.save(state, tmp_path / "rng.pth")
    expected = (torch.rand(2), np.random.rand(), random.random())
    restore_rng(torch.load(tmp_path / "rng.pth", weights_only=True))
    assert torch.equal(torch.rand(2), expected[0]) and np.random.rand() == expected[1]
    assert random.random() == expected[2]


def test_best_checkpoint_selection_breaks_auc_ties_by_validation_loss():
    from spai.train.trainer import _improves, _score

    first = _score({"val_auc": 0.99, "val_loss": 0.69})
    assert _improves(first, None)
    assert _improves(_score({"val_auc": 0.99, "val_loss": 0.30}), first)  # same AUC, calibrated logits
    assert not _improves(_score({"val_auc": 0.98, "val_loss": 0.01}), first)
    assert not _improves(_score({"val_auc": None, "val_loss": 0.01}), first)  # one-class epoch keeps the best
    assert _improves(_score({"val_auc": None, "val_loss": 0.5}), None)
