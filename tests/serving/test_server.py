"""End-to-end: the tritonserver bundled in nvidia-pytriton serving a python-ort repository of spai-tiny."""

from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("serving_bad_inputs", Path(__file__).with_name("bad_inputs.py"))
bad_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bad_inputs)

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def server(ort_repo):
    from serving.server import TritonServer

    with TritonServer(ort_repo) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(tiny_model, sample_paths) -> dict[str, float]:
    return {str(p): s.probability for p, s in zip(sample_paths, tiny_model.score_images(sample_paths))}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_samples_match_pytorch(server, sample_paths, reference, protocol):
    from serving.client import SpaiClient

    url = server.http_url if protocol == "http" else server.grpc_url
    rows = SpaiClient(url, protocol).score_paths(sample_paths, concurrency=4, progress=False)
    assert all(not r.error for r in rows), [r.error for r in rows if r.error]
    got = np.array([r.probability for r in rows])
    want = np.array([reference[r.image] for r in rows])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_concurrent_clients_are_batched(server, sample_paths):
    import tritonclient.http as th

    from serving.client import SpaiClient

    client = SpaiClient(server.http_url)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: client.infer(p.read_bytes()), sample_paths[:16] * 2))
    stats = th.InferenceServerClient(server.http_url).get_inference_statistics()["model_stats"]
    counts = {s["name"]: (s["inference_count"], s["execution_count"]) for s in stats}
    assert any(exe < inf for inf, exe in counts.values()), counts


def test_patch_attention_and_heatmap(server, sample_paths, tiny_model, tmp_path):
    from serving.client import SpaiClient
    from spai.cli import main

    row = SpaiClient(server.http_url).score_file(sample_paths[0], with_attention=True)
    (ref,) = tiny_model.score_images([sample_paths[0]])
    np.testing.assert_allclose(row.attention, ref.attention.mean(0), atol=1e-5)
    out = tmp_path / "scores.csv"
    assert main(["score", str(sample_paths[0]), "--url", server.http_url, "--heatmaps", str(tmp_path / "hm"),
                 "-o", str(out), "--no-progress"]) == 0
    assert list(csv.DictReader(open(out)))[0]["num_patches"] == str(ref.num_patches)
    assert len(list((tmp_path / "hm").glob("*.png"))) == 1


@pytest.mark.parametrize("name", sorted(bad_inputs.valid_oddities()))
def test_unusual_images_are_scored(server, name):
    from serving.client import SpaiClient

    out = SpaiClient(server.http_url).infer(bad_inputs.valid_oddities()[name])
    assert 0 <= out["probability"][0, 0] <= 1 and out["num_patches"][0, 0] >= 4


@pytest.mark.parametrize("name", sorted(bad_inputs.invalid_inputs()))
def test_bad_inputs_get_their_own_error(server, name):
    from serving.client import SpaiClient
    from spai.errors import ServingError

    client = SpaiClient(server.http_url)
    good = bad_inputs.jpeg()
    with ThreadPoolExecutor(4) as pool:  # a bad request among good ones in the same dynamic batch
        futures = [pool.submit(client.infer, good) for _ in range(3)]
        with pytest.raises(ServingError, match="image"):
            client.infer(bad_inputs.invalid_inputs()[name])
        assert all(f.result()["num_patches"][0, 0] == 5 for f in futures)
    assert server.is_ready()


def test_multi_image_request_with_one_bad_image_fails_alone(server):
    import tritonclient.grpc as tg

    client = tg.InferenceServerClient(server.grpc_url)
    image = tg.InferInput("image", [2, 1], "BYTES")
    image.set_data_from_numpy(np.array([[bad_inputs.jpeg()], [b"junk"]], dtype=object))
    with pytest.raises(Exception, match=r"image\[1\]"):
        client.infer("spai", [image])
    image.set_data_from_numpy(np.array([[bad_inputs.jpeg()], [bad_inputs.jpeg((500, 500))]], dtype=object))
    result = client.infer("spai", [image])
    assert result.as_numpy("num_patches").ravel().tolist() == [5, 4]  # 300x260 five-crop, 500x500 2x2 grid


def test_raw_models_reject_wrong_dtype_and_shape(server, tiny_model):
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    client = th.InferenceServerClient(server.http_url)
    wrong_dtype = th.InferInput("patches", [1, 3, 224, 224], "FP64")
    wrong_dtype.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.float64))
    with pytest.raises(InferenceServerException, match="(?i)data-type|datatype|FP64"):
        client.infer("spai_patch_encoder", [wrong_dtype])
    wrong_shape = th.InferInput("patches", [1, 3, 100, 100], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((1, 3, 100, 100), np.float32))
    with pytest.raises(InferenceServerException, match="(?i)shape"):
        client.infer("spai_patch_encoder", [wrong_shape])
    feats = th.InferInput("patch_features", [1, 4, tiny_model.feature_dim + 1], "FP32")
    feats.set_data_from_numpy(np.zeros((1, 4, tiny_model.feature_dim + 1), np.float32))
    mask = th.InferInput("patch_mask", [1, 4], "BOOL")
    mask.set_data_from_numpy(np.ones((1, 4), bool))
    with pytest.raises(InferenceServerException, match="(?i)shape"):
        client.infer("spai_aggregator", [feats, mask])
    assert client.is_server_ready()


def test_metrics_endpoint(server):
    import urllib.request

    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    assert "nv_inference_request_success" in text
