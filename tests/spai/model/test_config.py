"""Configs: named configs, YAML with upstream keys, overrides, clear errors."""

import pytest

import spai
from spai.errors import ConfigError
from spai.model.config import get_config, parse_override_value


def test_named_configs_are_listed():
    assert {"spai-fusion-b16", "spai-b16", "spai-tiny"} <= set(spai.list_models())


def test_fusion_b16_has_the_documented_settings():
    cfg = get_config("spai-fusion-b16")
    assert cfg.MODEL.VIT.PROJECTION_LAYERS == 3 and cfg.MODEL.CLS_HEAD.MLP_RATIO == 4
    assert cfg.MODEL.PATCH_VIT.ATTN_EMBED_DIM == 1024 and cfg.MODEL.PATCH_VIT.NUM_HEADS == 16
    assert cfg.MODEL.FRE.SEMANTIC_DIM == 512 and cfg.MODEL.FRE.NUM_HEADS == 8
    assert cfg.MODEL.FRE.EARLY_FUSION_LAYERS == [2, 4, 6, 8]
    assert cfg.DATA.AUGMENTED_VIEWS == 6 and cfg.TRAIN.LOSS == "focal"
    assert cfg.TRAIN.FOCAL_ALPHA == 0.25 and cfg.TRAIN.FOCAL_GAMMA == 2.0
    assert cfg.TRAIN.BASE_LR == 3e-4 and cfg.TRAIN.WEIGHT_DECAY == 0.03 and cfg.DATA.BATCH_SIZE == 32
    assert cfg.MODEL.FEATURE_EXTRACTION_BATCH == 400 and cfg.MODEL.VIT.PROJECTION_DIM == 1024
    assert cfg.MODEL.PATCH_VIT.PATCH_STRIDE == 224 and cfg.MODEL.PATCH_VIT.MINIMUM_PATCHES == 4
    assert cfg.MODEL.FRE.MASKING_RADIUS == 16


def test_unknown_key_names_the_nearest_valid_one():
    with pytest.raises(ConfigError, match="MODEL.FRE.MASKING_RADIUS"):
        get_config("spai-tiny", [("MODEL.FRE.MASKING_RADIU", "8")])


def test_unknown_model_name_suggests_a_close_one():
    with pytest.raises(ConfigError, match="spai-tiny"):
        spai.create_model("spai-tinny")


def test_yaml_file_with_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("MODEL:\n  SID_DROPOUT: 0.2\n")
    (tmp_path / "cfg.yaml").write_text("BASE: [base.yaml]\nMODEL:\n  PATCH_VIT:\n    PATCH_STRIDE: 112\n")
    cfg = get_config(tmp_path / "cfg.yaml", [("TRAIN.EPOCHS", "3")])
    assert cfg.MODEL.SID_DROPOUT == 0.2 and cfg.MODEL.PATCH_VIT.PATCH_STRIDE == 112 and cfg.TRAIN.EPOCHS == 3


def test_override_values_are_parsed_not_evaluated():
    assert parse_override_value("[1, 2]") == [1, 2]
    assert parse_override_value("__import__('os')") == "__import__('os')"


def test_invalid_combination_is_rejected():
    with pytest.raises(ConfigError, match="EARLY_FUSION_LAYERS"):
        get_config("spai-tiny", [("MODEL.FRE.EARLY_FUSION_LAYERS", "[9]")])


def test_config_round_trips_as_plain_data():
    cfg = get_config("spai-tiny")
    plain = cfg.to_dict()
    assert type(plain) is dict and type(plain["MODEL"]) is dict
    assert get_config(plain) == cfg
