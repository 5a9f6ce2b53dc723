"""Our block iteration equals open_clip's own forward (hooks on ln_2), in one pass for all three views."""

import pytest
import torch

from spai.model.nn.backbone import CLIPBackbone, create_clip_visual, open_clip_reference_features


@pytest.mark.parametrize("model_name", ["spai-tiny-vit", pytest.param("ViT-B-16", marks=pytest.mark.slow)])
def test_backbone_taps_and_embedding_equal_open_clip_forward(model_name):
    torch.manual_seed(0)
    visual = create_clip_visual(model_name).eval()
    layers = list(range(len(visual.transformer.resblocks)))
    backbone = CLIPBackbone(visual, layers)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        tokens, emb = backbone(x)
        ref_tokens, ref_emb = open_clip_reference_features(visual, x, layers)
    assert tokens.shape == (2, len(layers), 196, visual.conv1.out_channels)
    assert emb.shape == (2, visual.output_dim)
    assert torch.allclose(tokens, ref_tokens, atol=1e-5)
    assert torch.allclose(emb, ref_emb, atol=1e-5)


def test_backbone_is_frozen(tiny_model):
    assert not any(p.requires_grad for p in tiny_model.mfvit.vit.parameters())
    tiny_model.train()
    try:
        assert not tiny_model.mfvit.vit.training
    finally:
        tiny_model.eval()


def test_missing_weights_file_is_a_clear_error(tmp_path):
    from spai.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        create_clip_visual("spai-tiny-vit", tmp_path / "nope.pt")


def test_backbone_loads_open_clip_weights_from_a_local_path(tmp_path):
    import open_clip

    from spai.model.nn.backbone import _import_open_clip

    _import_open_clip()
    torch.manual_seed(1)
    clip = open_clip.create_model("spai-tiny-vit")
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    visual = create_clip_visual("spai-tiny-vit", tmp_path / "clip.pt")
    assert torch.equal(visual.conv1.weight, clip.visual.conv1.weight)
