"""What keeps the server busy and its memory bounded: tuning options land in the configs and the `spai` model's
settings, patches travel as uint8 (150,528 bytes each), thread counts per instance, the server's shared-memory
and heap options, and a killed server's shared-memory regions are removed. The `triton` tests run the real server:
several encoder calls in flight give PyTorch's scores."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from helpers import parse_pbtxt as parse
from helpers import pbtxt_parameters as params

from serving.bls import EntrySettings
from serving.repository import (
    AGGREGATOR,
    ENCODER,
    ENTRY,
    TUNING,
    RepositoryOptions,
    tuning_with,
    write_configs,
)
from spai.errors import ServingError
from spai.model.specs import PATCHES, PATCHES_INPUT

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
pytest.importorskip("google.protobuf.text_format")




@pytest.mark.parametrize("variant", ["python-ort", "onnx", "trt"], ids=lambda v: f"{v}-variant")
def test_tuning_lands_in_the_configs(tmp_path, variant):
    tuning = tuning_with(variant, entry_instances=3, encoder_instances=2, aggregator_instances=1, in_flight=5,
                         encoder_preferred_batch=(32, 64, 1000), entry_queue_delay_us=3000,
                         encoder_queue_delay_us=700, aggregator_queue_delay_us=0, encoder_threads=1, entry_threads=2,
                         entry_max_batch=6)
    root = write_configs(tmp_path, RepositoryOptions(variant=variant, feature_dim=96, tuning=tuning))
    entry, enc, agg = (parse(root / m / "config.pbtxt") for m in (ENTRY, ENCODER, AGGREGATOR))
    assert [c.instance_group[0].count for c in (entry, enc, agg)] == [3, 2, 1]
    assert entry.max_batch_size == 6
    assert list(enc.dynamic_batching.preferred_batch_size) == [32, 64]  # sizes over max_batch_size are left out
    assert not agg.dynamic_batching.preferred_batch_size
    delays = [c.dynamic_batching.max_queue_delay_microseconds for c in (entry, enc, agg)]
    assert delays == [3000, 700, 0]
    settings = EntrySettings.from_parameters(params(entry))
    assert (settings.in_flight, settings.threads) == (5, 2)
    if variant == "python-ort":
        assert params(enc)["threads"] == "1" and params(agg)["threads"] == str(TUNING[variant].aggregator_threads)
    if variant == "onnx":
        assert params(enc)["intra_op_thread_count"] == "1"


def test_each_variant_has_its_defaults_and_bad_values_are_refused():
    assert RepositoryOptions(variant="trt", feature_dim=8).tuning == TUNING["trt"]
    assert RepositoryOptions(variant="python-ort", feature_dim=8).tuning == TUNING["python-ort"]
    assert tuning_with("trt", in_flight=None) == TUNING["trt"]
    for bad in ({"in_flight": 0}, {"entry_instances": 0}, {"entry_max_batch": 0}, {"encoder_queue_delay_us": -1},
                {"encoder_preferred_batch": (0,)}):
        with pytest.raises(ServingError):
            tuning_with("python-ort", **bad)
    with pytest.raises(ServingError, match="in_flight=0 must be at least 1"):
        EntrySettings.from_parameters({"in_flight": "0"})
    assert EntrySettings.from_parameters({}).in_flight == 1  # a repository from before: one call at a time


def test_patches_travel_as_uint8_150528_bytes_each(tmp_path):
    """What the `spai` model sends the encoder: the generated config's settings declare uint8 patches, the
    encoder's config takes TYPE_UINT8 [3, 224, 224], and a request of n patches holds n x 150,528 bytes."""
    from spai.infer.feeds import encoder_feeds
    from spai.infer.prepare import prepare_image
    from spai.infer.runners import Runner

    root = write_configs(tmp_path, RepositoryOptions(variant="trt", feature_dim=1168, attention=True))
    settings = EntrySettings.from_parameters(params(parse(root / ENTRY / "config.pbtxt")))
    encoder = Runner(settings.encoder_limits(), settings.encoder_dtypes())  # what BlsRunner declares
    image = prepare_image(np.random.default_rng(0).integers(0, 256, (2000, 3000, 3), dtype=np.uint8), "x")
    feeds = [f[PATCHES] for f in encoder_feeds(encoder, [image])]
    assert [len(f) for f in feeds] == [64, 40]  # 8 x 13 patches in chunks of encoder_chunk
    assert {f.dtype for f in feeds} == {np.dtype(np.uint8)}
    assert {f.nbytes // len(f) for f in feeds} == {150_528} == {int(np.prod(PATCHES_INPUT.shape))}
    (inp,) = parse(root / ENCODER / "config.pbtxt").input
    assert model_config_pb2.DataType.Name(inp.data_type) == "TYPE_UINT8" and list(inp.dims) == [3, 224, 224]


def test_thread_counts_per_instance(monkeypatch):
    from serving.instance import THREAD_VARIABLES, instance_count, instance_threads, limit_threads
    from spai.infer.runners import available_cores

    assert instance_count({"instance_group": [{"count": 2}, {"count": 1}]}) == 3 and instance_count({}) == 1
    assert instance_threads(3, 2) == 3
    assert instance_threads(0, 1) == available_cores()
    assert instance_threads(0, 1000) == 1
    assert instance_threads(0, 1, {"SPAI_INTRA_OP_THREADS": "3"}) == 3  # the pod launcher's share wins over cores
    assert instance_threads(2, 1, {"SPAI_INTRA_OP_THREADS": "3"}) == 2  # an explicit config value wins over both
    for name in THREAD_VARIABLES:
        monkeypatch.setenv(name, "99")
    assert limit_threads(1) == 1 and all(os.environ[n] == "1" for n in THREAD_VARIABLES)
    threadpoolctl = pytest.importorskip("threadpoolctl")
    assert all(p["num_threads"] == 1 for p in threadpoolctl.threadpool_info())
    threadpoolctl.threadpool_limits(available_cores())


def test_server_options_reach_the_command_line_and_the_environment(tmp_path):
    from serving.server import MiB, ServerOptions, TritonServer

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\n')
    server = TritonServer(tmp_path, options=ServerOptions(8 * MiB, 4 * MiB, 3), binary="/bin/true")
    cmd = " ".join(server.command())
    assert f"python,shm-default-byte-size={8 * MiB}" in cmd and f"python,shm-growth-byte-size={4 * MiB}" in cmd
    assert f"python,shm-region-prefix-name={server.shm_prefix}" in cmd
    assert server.environment()["MALLOC_ARENA_MAX"] == "3"
    other = TritonServer(tmp_path, binary="/bin/true", options=ServerOptions(malloc_arena_max=None))
    assert other.shm_prefix != server.shm_prefix
    assert other.environment().get("MALLOC_ARENA_MAX") == os.environ.get("MALLOC_ARENA_MAX")
    assert ServerOptions.from_flags() == ServerOptions()  # what `spai serve` and the load test build from flags
    assert ServerOptions.from_flags(8, 4, 0, 0) == ServerOptions(8 * MiB, 4 * MiB, None, None)
    assert ServerOptions.from_flags(malloc_arena_max=3, malloc_mmap_threshold=MiB).environment() == {
        "MALLOC_ARENA_MAX": "3", "MALLOC_MMAP_THRESHOLD_": str(MiB)}
    with pytest.raises(ServingError, match="shm-default-byte-size"):
        ServerOptions(shm_default_bytes=1000)
    with pytest.raises(ServingError, match="MALLOC_ARENA_MAX"):
        ServerOptions(malloc_arena_max=0)


def test_a_dev_shm_too_small_for_the_pools_is_refused_with_how_to_fix(tmp_path):
    from serving.server import MiB, ServerOptions, TritonServer, check_shm_space

    root = write_configs(tmp_path, RepositoryOptions(variant="python-ort", feature_dim=96))
    check_shm_space(root, ServerOptions())  # this machine's /dev/shm holds the default pools
    free = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
    huge = ServerOptions(shm_default_bytes=free // 2 + MiB)  # 4 Python-backend instances: twice the free space
    with pytest.raises(ServingError, match=r"4 Python-backend instances need 4 x .*--shm-size=.*--shm-default-mb"):
        check_shm_space(root, huge)
    with pytest.raises(ServingError, match="--shm-size"):
        TritonServer(root, options=huge, binary="/bin/true").start()


def test_spai_serve_describes_its_options(tmp_path):
    from dataclasses import asdict

    from serving.server import ServerOptions, describe_repository
    from spai_cli.serve import describe_options

    root = write_configs(tmp_path, RepositoryOptions(variant="python-ort", feature_dim=96,
                                                     tuning=tuning_with("python-ort", encoder_threads=0)))
    options = ServerOptions(shm_default_bytes=96 * 2**20, malloc_mmap_threshold=2**20)
    lines = describe_options({**asdict(options), "models": describe_repository(root)})
    text = "\n".join(lines)
    assert "shm pool 96 MiB per instance, grows by 16 MiB" in text and "MALLOC_ARENA_MAX=2" in text
    assert "MALLOC_MMAP_THRESHOLD_=1048576" in text
    entry = next(line for line in lines if line.strip().startswith("spai "))
    assert f"{TUNING['python-ort'].entry_instances} x KIND_CPU" in entry and "in_flight" in entry
    assert "(cores / instances)" in next(line for line in lines if ENCODER in line)


def test_tuning_flags_of_spai_repository(tiny_onnx_dir, tmp_path):
    from spai_cli import main

    out = tmp_path / "repo"
    assert main(["repository", "--artifacts", str(tiny_onnx_dir), "--variant", "python-ort", "-o", str(out),
                 "--in-flight", "3", "--encoder-instances", "2", "--encoder-preferred-batch", "16,32",
                 "--entry-max-batch", "8"]) == 0
    enc, entry = parse(out / ENCODER / "config.pbtxt"), parse(out / ENTRY / "config.pbtxt")
    assert enc.instance_group[0].count == 2 and list(enc.dynamic_batching.preferred_batch_size) == [16, 32]
    assert params(entry)["in_flight"] == "3" and entry.max_batch_size == 8
    assert main(["repository", "--checked-in", "--in-flight", "3"]) == 1  # production defaults only


@pytest.mark.triton
def test_several_encoder_calls_in_flight_give_pytorchs_scores(tiny_onnx_dir, tiny_model, generated_images, tmp_path):
    """Small chunks (4 patches) and 3 calls in flight, one `spai` instance: the 2048 x 1152 image takes over a
    dozen encoder calls through async_exec; the scores are PyTorch's."""
    from serving.client import SpaiClient
    from serving.repository import build_repository
    from serving.server import TritonServer

    repo = build_repository(tiny_onnx_dir, "python-ort", tmp_path / "repo",
                            tuning=tuning_with("python-ort", in_flight=3, entry_instances=1),
                            settings=EntrySettings(encoder_chunk=4, aggregator_batch=4))
    images = generated_images[-6:]  # with wide_2048x1152.jpg
    want = {str(p): s.probability for p, s in zip(images, tiny_model.score_images(images))}
    with TritonServer(repo) as server:
        rows = SpaiClient(server.http_url).score_paths(images, concurrency=3, progress=False)
    assert not any(r.error for r in rows), [r.error for r in rows]
    assert max(r.num_patches for r in rows) > 12  # several chunks per execute
    np.testing.assert_allclose([r.probability for r in rows], [want[r.image] for r in rows], atol=1e-5)


@pytest.mark.triton
def test_a_killed_server_leaves_no_shared_memory_behind(ort_repo):
    from serving.server import TritonServer

    server = TritonServer(ort_repo).start()
    regions = list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
    assert len(regions) >= 3  # one per Python-backend instance
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(10)
    assert all(r.exists() for r in regions)  # SIGKILL: nobody unlinked them
    server.stop()
    assert not any(r.exists() for r in regions)


def _noise_jpeg(height: int, width: int, seed: int) -> bytes:
    import io

    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.triton
def test_shared_memory_pools_do_not_grow_under_a_burst_of_large_images(ort_repo):
    """With the default ServerOptions, 48 requests of 1500 x 1100 images at concurrency 16 fit in every
    Python-backend pool as it started: no region grew, and tritonserver maps each once (a grown region is mapped
    again, and RSS counts its pages once per mapping)."""
    from concurrent.futures import ThreadPoolExecutor

    from serving.client import SpaiClient
    from serving.server import ServerOptions, TritonServer

    images = [_noise_jpeg(1100, 1500, seed) for seed in range(4)]
    with TritonServer(ort_repo) as server:
        client = SpaiClient(server.http_url)
        with ThreadPoolExecutor(16) as pool:
            out = list(pool.map(lambda i: client.infer(images[i % len(images)]), range(48)))
        regions = sorted(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
        maps = Path(f"/proc/{server.process.pid}/maps").read_text()
        sizes = {r.name: r.stat().st_size for r in regions}
        mappings = {r.name: maps.count(str(r)) for r in regions}
    assert all(0.0 <= float(o["probability"][0, 0]) <= 1.0 for o in out)
    assert len(regions) >= 4  # 2 `spai` instances, the encoder, the aggregator
    assert set(sizes.values()) == {ServerOptions().shm_default_bytes}, sizes
    assert set(mappings.values()) == {1}, mappings


def test_python_ort_graphs_run_in_calls_of_at_most_max_ort_batch_rows(tmp_path):
    from serving.models.batching import infer_in_slices
    from spai.infer.runners import Runner

    class Doubling(Runner):
        def __init__(self, limit):
            super().__init__({"x": (limit,)})
            self.calls = []

        def _infer(self, feed):
            self.calls.append(len(feed["x"]))
            return {"y": feed["x"] * 2}

    runner = Doubling(4)
    feeds = [{"x": np.arange(10.0)[:, None]}, {"x": np.arange(3.0)[:, None]}, {"x": np.arange(1.0)[:, None]}]
    out = infer_in_slices(runner, feeds, 4)
    assert [o["y"][:, 0].tolist() for o in out] == [[2.0 * i for i in range(n)] for n in (10, 3, 1)]
    assert max(runner.calls) <= 4 and sum(runner.calls) == 14
    root = write_configs(tmp_path, RepositoryOptions(variant="python-ort", feature_dim=96,
                                                     tuning=tuning_with("python-ort", encoder_ort_batch=24)))
    assert params(parse(root / ENCODER / "config.pbtxt"))["max_ort_batch"] == "24"
    assert "max_ort_batch" not in params(parse(root / AGGREGATOR / "config.pbtxt"))


def test_the_heap_is_trimmed_after_every_threshold_of_decoded_pixels():
    from serving.instance import HeapTrimmer

    calls = []
    trimmer = HeapTrimmer(10)
    trimmer._trim = calls.append  # count the calls instead of trimming (glibc's malloc_trim is called for real
    assert [trimmer.handled(n) for n in (4, 4, 4, 20, 1)] == [False, False, True, True, False]  # below)
    assert calls == [0, 0] and trimmer.trims == 2
    assert not HeapTrimmer(0).handled(10**9)
    real = HeapTrimmer(1)
    if real._trim is not None:  # glibc
        assert real.handled(1) and real.trims == 1
