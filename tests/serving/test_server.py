"""End-to-end: the tritonserver bundled in nvidia-pytriton serving a python-ort repository of spai-tiny, on the
project's own generated images (plus the shared samples where present)."""

from __future__ import annotations

import csv
import gc
import importlib.util
import shutil
import traceback
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location("serving_bad_inputs", Path(__file__).with_name("bad_inputs.py"))
bad_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bad_inputs)

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def server(ort_repo):
    from serving.server import TritonServer

    with TritonServer(ort_repo) as srv:
        yield srv
        gc.collect()  # raw tritonclient calls that raised keep their client in a cycle: close those connections


@pytest.fixture(scope="module")
def reference(tiny_model, check_images) -> dict[str, float]:
    return {str(p): s.probability for p, s in zip(check_images, tiny_model.score_images(check_images), strict=True)}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_images_match_pytorch(server, check_images, reference, protocol):
    from serving.client import SpaiClient

    url = server.http_url if protocol == "http" else server.grpc_url
    rows = SpaiClient(url, protocol).score_paths(check_images, concurrency=4, progress=False)
    assert all(not r.error for r in rows), [r.error for r in rows if r.error]
    got = np.array([r.probability for r in rows])
    want = np.array([reference[r.image] for r in rows])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_concurrent_clients_are_batched(server, check_images):
    import tritonclient.http as th

    from serving.client import SpaiClient

    client = SpaiClient(server.http_url)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: client.infer(p.read_bytes()), check_images[:16] * 2))
    stats = th.InferenceServerClient(server.http_url).get_inference_statistics()["model_stats"]
    counts = {s["name"]: (s["inference_count"], s["execution_count"]) for s in stats}
    assert any(exe < inf for inf, exe in counts.values()), counts


def test_patch_attention_and_heatmap(server, check_images, tiny_model, tmp_path):
    from serving.client import SpaiClient
    from spai_cli import main

    image = next(p for p in check_images if "wide" in p.name)  # 2048 x 1152: a 9 x 5 grid
    row = SpaiClient(server.http_url).score_file(image, with_attention=True)
    (ref,) = tiny_model.score_images([image])
    np.testing.assert_allclose(row.attention, ref.attention, atol=1e-5)
    out = tmp_path / "scores.csv"
    assert main(["score", str(image), "--url", server.http_url, "--heatmaps", str(tmp_path / "hm"),
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
    wrong_shape = th.InferInput("patches", [1, 3, 100, 100], "UINT8")
    wrong_shape.set_data_from_numpy(np.zeros((1, 3, 100, 100), np.uint8))
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


def _http_status(call) -> str:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as info:
        call()
    traceback.clear_frames(info.tb)  # tritonclient's raising frame holds its error: free the client (connection) now
    return str(info.value.status())


def _infer_http(url: str, data: bytes):
    import tritonclient.http as th

    image = th.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[data]], dtype=object))
    return lambda: th.InferenceServerClient(url).infer("spai", [image])


def _executed(url: str) -> int:
    """Requests the `spai` model has run (an error response counts too)."""
    import tritonclient.http as th

    (stats,) = th.InferenceServerClient(url).get_inference_statistics("spai")["model_stats"]
    return int(stats["inference_stats"]["compute_infer"]["count"])


def test_a_bad_image_answers_invalid_arg(server):
    assert _http_status(_infer_http(server.http_url, b"junk")) == "400"


def test_an_encoder_failure_answers_internal_and_the_client_retries(ort_repo, tmp_path):
    """Every encoder call fails (its model file is the aggregator's graph): the good request gets INTERNAL
    (HTTP 500, retryable), a bad one in the same server still gets INVALID_ARG, and the server stays ready."""
    from serving.client import SpaiClient, is_retryable
    from serving.server import TritonServer
    from spai.errors import ServingError

    repo = shutil.copytree(ort_repo, tmp_path / "repo")
    shutil.copyfile(repo / "spai_aggregator" / "1" / "model.onnx", repo / "spai_patch_encoder" / "1" / "model.onnx")
    with TritonServer(repo) as broken:
        assert _http_status(_infer_http(broken.http_url, bad_inputs.jpeg())) == "500"
        assert _http_status(_infer_http(broken.http_url, b"junk")) == "400"
        before = _executed(broken.http_url)
        with pytest.raises(ServingError, match="spai_patch_encoder failed"):
            SpaiClient(broken.http_url, retries=1).infer(bad_inputs.jpeg())
        assert _executed(broken.http_url) == before + 2  # the request and its retry
        assert broken.is_ready()
    assert broken.exit_code == 0  # it stopped on SIGTERM: no failed request left a connection open
    from tritonclient.utils import InferenceServerException

    assert is_retryable(InferenceServerException("x", status="500"))
    assert not is_retryable(InferenceServerException("image: not a recognised image format", status="400"))


def test_a_failed_request_frees_its_client_at_once(server):
    """tritonclient raises from a frame that holds its own error (a reference cycle through the traceback). A
    SpaiClient whose request failed, once dropped, must go at once with its keep-alive connection, not at the
    next collection: tritonserver's graceful stop waits for open connections (30 s)."""
    from serving.client import SpaiClient
    from spai.errors import ServingError

    client = SpaiClient(server.http_url)
    gc.disable()
    try:
        with pytest.raises(ServingError, match="image"):
            client.infer(b"junk")
        gone = weakref.ref(client)
        del client
        assert gone() is None
    finally:
        gc.enable()


def test_a_closed_client_lets_the_server_stop_on_sigterm(ort_repo):
    from serving.client import SpaiClient
    from serving.server import TritonServer

    with TritonServer(ort_repo) as srv, SpaiClient(srv.http_url) as client, ThreadPoolExecutor(2) as pool:
        client.infer(bad_inputs.jpeg())
        assert all(out["num_patches"][0, 0] == 5 for out in pool.map(client.infer, [bad_inputs.jpeg()] * 4))
        client.close()  # this thread's connection and the live pool threads' close while all of them live on
        srv.stop(timeout=20)
        assert srv.exit_code == 0


def test_server_errors_without_repository(tmp_path):
    from serving.server import TritonServer
    from spai.errors import ServingError

    with pytest.raises(ServingError, match="config.pbtxt"):
        TritonServer(tmp_path).start()


def _alive_in_group(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that still run (zombies excluded)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def test_stopping_a_crashed_server_ends_its_stubs(ort_repo):
    """When tritonserver dies on its own (a soak saw it abort after a stub's segfault), a stub that does not notice
    outlives it: an orphaned encoder stub kept two cores busy for 13 minutes. Here a stopped stub (SIGSTOP) plays
    that stub; stop() must end the whole process group, not only the server (the other stubs exit on their own)."""
    import os
    import signal
    import time

    from serving.server import TritonServer

    server = TritonServer(ort_repo).start()
    pgid = server.process.pid
    try:
        stubs = [p for p in _alive_in_group(pgid) if p != pgid]
        assert len(stubs) >= 4  # 2 `spai` instances, the encoder, the aggregator
        os.kill(stubs[0], signal.SIGSTOP)
        os.kill(pgid, signal.SIGKILL)
        server.process.wait(10)
        server.stop()
        deadline = time.monotonic() + 5  # SIGKILL is delivered asynchronously
        while _alive_in_group(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive_in_group(pgid) == []
    finally:
        for pid in _alive_in_group(pgid):
            os.kill(pid, signal.SIGKILL)
