"""The deployment split: patchify + encode_patches + aggregate == score, batch independence, determinism."""

import numpy as np
import pytest
import torch

import spai


def _images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 448, 700, generator=g), torch.rand(3, 224, 224, generator=g),
            torch.randint(0, 256, (3, 130, 300), dtype=torch.uint8, generator=g), torch.rand(3, 500, 460, generator=g)]


def test_score_equals_patchify_encode_aggregate(tiny_model):
    images = _images()
    scores = tiny_model.score(images)
    with torch.no_grad():
        manual = []
        for img in images:
            feats = tiny_model.encode_patches(spai.patchify(img, tiny_model.patch_spec))
            manual.append(torch.sigmoid(tiny_model.aggregate(feats[None]))[0, 0].item())
    np.testing.assert_allclose(scores, manual, atol=1e-6)


def test_batch_with_padding_mask_equals_one_by_one(tiny_model):
    images = _images()
    batched = tiny_model.score(images)
    single = np.array([tiny_model.score([img])[0] for img in images])
    np.testing.assert_allclose(batched, single, atol=1e-6)


def test_chunk_size_does_not_change_scores(tiny_model):
    images = _images()[:2]
    np.testing.assert_allclose(tiny_model.score(images, chunk_size=1), tiny_model.score(images, chunk_size=64),
                               atol=1e-6)


def test_padded_patches_get_zero_attention(tiny_model):
    feats = torch.randn(5, tiny_model.feature_dim)
    batch = torch.zeros(2, 3, tiny_model.feature_dim)
    batch[0, :2], batch[1] = feats[:2], feats[2:]
    mask = torch.tensor([[True, True, False], [True, True, True]])
    with torch.no_grad():
        logits, attn = tiny_model.aggregate(batch, mask, return_attention=True)
        alone = tiny_model.aggregate(feats[:2][None])
    assert torch.all(attn[0, :, 2:] == 0)
    assert torch.allclose(logits[0], alone[0], atol=1e-6)


def test_eval_is_deterministic(tiny_model):
    img = _images()[0]
    a, b = tiny_model.score_images([img]), tiny_model.score_images([img])
    assert a[0].logit == b[0].logit


def test_score_images_reports_patch_counts_and_attention(tiny_model):
    results = tiny_model.score_images(_images())
    assert [r.num_patches for r in results] == [6, 5, 5, 4]
    for r in results:
        assert r.attention.shape == (r.num_patches,)  # mean over the heads, as the aggregator graph outputs it
        np.testing.assert_allclose(r.attention.sum(), 1.0, atol=1e-5)
        assert 0.0 <= r.probability <= 1.0


def test_tensor_forward_matches_score_for_side_by_side_views(tiny_model):
    views = torch.rand(2, 3, 224, 224 * 4)
    with torch.no_grad():
        logits = tiny_model(views)
    np.testing.assert_allclose(torch.sigmoid(logits[:, 0]).numpy(), tiny_model.score(list(views)), atol=1e-6)


def test_feature_dim_counts_statistics_and_context(tiny_model):
    assert tiny_model.feature_dim == 12 * 4 + 48
    with torch.no_grad():
        assert tiny_model.encode_patches(torch.rand(2, 3, 224, 224)).shape == (2, tiny_model.feature_dim)


@pytest.mark.slow
def test_fusion_b16_builds_with_the_documented_dimensions():
    model = spai.create_model("spai-fusion-b16")
    assert model.feature_dim == 144 + 1024
    assert model.patch_aggregator.shape == (16, 1, 64)
    assert model.cls_head.head[0].weight.shape == (1168 * 4, 1168)
    assert len(model.mfvit.features_processor.early_fusion_gates) == 4
    with torch.no_grad():
        assert model.encode_patches(torch.rand(1, 3, 224, 224)).shape == (1, 1168)
