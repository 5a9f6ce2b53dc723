"""Pure serving functions (no server): pipeline vs PyTorch, request isolation, ORT batching, heatmaps, client I/O."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from serving.ort_runner import group_by_shape, split_outputs
from serving.pipeline import ImageResult, PipelineSettings, pack_results, score_requests
from spai.errors import ImageError, ServingError


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(w).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_settings_from_parameters():
    s = PipelineSettings.from_parameters({"max_pixels": "100", "patch_stride": "112", "other": "x"})
    assert s.max_pixels == 100 and s.patch.stride == 112
    with pytest.raises(ServingError, match="max_bytes"):
        PipelineSettings.from_parameters({"max_bytes": "lots"})


def test_pipeline_matches_pytorch_and_isolates_bad_requests(tiny_model, tiny_export):
    from serving.ort_runner import InProcessScorer

    scorer = InProcessScorer(tiny_export)
    images = [_png(300, 250), _png(500, 470), _png(40, 30)]
    settings = PipelineSettings(encoder_chunk=3, aggregator_batch=2, max_pixels=300_000)
    out = score_requests([[images[0]], [b"junk"], [images[1], images[2]], [_png(700, 500)], []], settings,
                         scorer.encode, scorer.aggregate)
    assert isinstance(out[1], ImageError) and isinstance(out[3], ImageError) and isinstance(out[4], ImageError)
    assert "pixels" in str(out[3])
    ref = tiny_model.score_images(images)
    got = [out[0][0], *out[2]]
    np.testing.assert_allclose([r.probability for r in got], [r.probability for r in ref], atol=1e-5)
    assert [r.num_patches for r in got] == [r.num_patches for r in ref]
    np.testing.assert_allclose(got[1].attention, ref[1].attention.mean(0), atol=1e-5)


def test_max_patches_limit():
    settings = PipelineSettings(max_patches=4)
    (err,) = score_requests([[_png(700, 700)]], settings, lambda p: p, lambda f, m: (None, None))
    assert isinstance(err, ImageError) and "max_patches" in str(err)


def test_pack_results_pads_attention():
    rs = [ImageResult(0.5, 0.0, 2, np.array([0.4, 0.6], np.float32)), ImageResult(0.7, 0.8, 3, np.ones(3) / 3)]
    out = pack_results(rs, with_attention=True)
    assert out["patch_attention"].shape == (2, 3) and out["patch_attention"][0, 2] == 0
    assert out["num_patches"].dtype == np.int32 and "patch_attention" not in pack_results(rs, False)


def test_group_and_split():
    reqs = [{"x": np.zeros((2, 3))}, {"x": np.zeros((1, 4))}, {"x": np.ones((3, 3))}]
    assert group_by_shape(reqs) == [[0, 2], [1]]
    parts = split_outputs({"y": np.arange(5)}, [2, 3])
    assert [p["y"].tolist() for p in parts] == [[0, 1], [2, 3, 4]]


def test_attention_map_geometry():
    from serving.heatmap import attention_map

    assert attention_map(224, 448, np.full(5, 0.2)).shape == (224, 448)  # 1x2 grid -> five-crop
    heat = attention_map(448, 448, np.array([0.1, 0.2, 0.3, 0.4]))
    assert heat[0, 0] == pytest.approx(0.1) and heat[447, 447] == pytest.approx(0.4)


def test_attention_map_rejects_wrong_length():
    from serving.heatmap import attention_map

    with pytest.raises(ValueError):
        attention_map(448, 448, np.ones(3))


def test_expand_inputs_csv_and_dir(tmp_path):
    from serving.client import expand_inputs

    (tmp_path / "a.png").write_bytes(_png(10, 10))
    (tmp_path / "list.csv").write_text("image,label\na.png,1\n")
    assert expand_inputs([str(tmp_path / "list.csv")]) == [tmp_path / "a.png"]
    assert expand_inputs([str(tmp_path)]) == [tmp_path / "a.png"]
    with pytest.raises(ImageError):
        expand_inputs([str(tmp_path / "missing.jpg")])


def test_server_errors_without_repository(tmp_path):
    from serving.server import TritonServer, find_binary

    try:
        find_binary()
    except ServingError:
        pytest.skip("no tritonserver here")
    with pytest.raises(ServingError, match="config.pbtxt"):
        TritonServer(tmp_path).start()
