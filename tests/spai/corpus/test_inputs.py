"""Inputs of a scoring run: listed lazily (folders, CSV and text lists, standard input, URLs), read with limits,
per-image errors for what cannot be read, object storage through a real S3 API (moto's server on 127.0.0.1)."""

from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest
from PIL import Image

from spai.corpus.inputs import InputRef, is_done, iter_inputs, map_bounded, read_input, todo_inputs
from spai.errors import ImageError
from spai.infer.prepare import InputLimits, prepare_image


def _png(seed: int = 0, size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path):
    for name in ("b.png", "a.png", "c.jpg"):
        (tmp_path / name).write_bytes(_png())
    (tmp_path / "notes.md").write_text("not an image")
    (tmp_path / "sub").mkdir()
    return tmp_path


def test_sources_are_listed_in_order_with_size_and_mtime(folder, tmp_path_factory, monkeypatch):
    lists = tmp_path_factory.mktemp("lists")
    (lists / "l.csv").write_text(f"label,image\n1,{folder / 'a.png'}\n0,missing.png\n")
    (lists / "l.txt").write_text(f"# a comment\n\n{folder / 'b.png'}\ns3://bucket/x.png\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{folder / 'c.jpg'}\n"))
    refs = list(iter_inputs([str(folder), str(lists / "l.csv"), str(lists / "l.txt"), "-"]))
    assert [r.key for r in refs] == [str(folder / n) for n in ("a.png", "b.png", "c.jpg", "a.png")] + \
        [str(lists / "missing.png"), str(folder / "b.png"), "s3://bucket/x.png", str(folder / "c.jpg")]
    st = os.stat(folder / "a.png")
    assert refs[0] == InputRef(str(folder / "a.png"), st.st_size, st.st_mtime)
    assert refs[4].size is None and refs[6] == InputRef("s3://bucket/x.png")  # an entry fails at read, alone


def test_listing_is_lazy_and_a_missing_source_fails(folder):
    it = iter_inputs([str(folder), str(folder / "missing.png")])
    assert next(it).key.endswith("a.png")  # listed before the later source is looked at
    with pytest.raises(ImageError, match="no such file"):
        list(it)
    with pytest.raises(ImageError, match="no images found"):
        list(iter_inputs([str(folder / "sub")]))


def test_read_input_limits_and_errors(folder):
    data = read_input(InputRef(str(folder / "a.png")))
    assert data == (folder / "a.png").read_bytes()
    with pytest.raises(ImageError, match="over the limit of 10"):
        read_input(InputRef(str(folder / "a.png")), InputLimits(max_bytes=10))
    with pytest.raises(ImageError, match="cannot read"):
        read_input(InputRef(str(folder / "gone.png")))
    with pytest.raises(ImageError, match="directory"):
        read_input(InputRef(str(folder / "sub")))
    with pytest.raises(ImageError, match="truncated"):
        read_input(InputRef(str(folder / "a.png"), size=len(data) + 5))
    assert read_input(InputRef((folder / "a.png").as_uri())) == data  # file:// through fsspec


def test_resume_skips_done_and_rescores_changed():
    done = {"a": (10, 1.0), "b": (10, 1.0), "c": (None, None)}
    refs = [InputRef("a", 10, 1.0), InputRef("b", 11, 1.0), InputRef("c", 5, 2.0), InputRef("d"), InputRef("a")]
    assert [r.key for r in todo_inputs(refs, done)] == ["b", "d"]
    assert not is_done(InputRef("a", 10, 1.5), done)


def test_map_bounded_takes_at_most_a_window_ahead():
    taken = []

    def items():
        for i in range(100):
            taken.append(i)
            yield i
    seen = []
    for i, future in map_bounded(lambda x: x * 2, items(), window=4, workers=2):
        assert len(taken) - i <= 4  # taken from the listing, not yet handed back (this one included)
        seen.append(future.result())
    assert seen == [2 * i for i in range(100)]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A bucket on moto's S3 server on 127.0.0.1: two images, a truncated one; s3fs pointed at it."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import fsspec

    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        mp.setitem(fsspec.config.conf, "s3", {"endpoint_url": f"http://{host}:{port}", "key": "test",
                                              "secret": "test", "skip_instance_cache": True})
        fs = fsspec.filesystem("s3")
        fs.mkdir("corpus")
        fs.pipe({"corpus/imgs/b.png": _png(1), "corpus/imgs/a.png": _png(2), "corpus/imgs/readme.txt": b"x",
                 "corpus/imgs/cut.png": _png(3)[:200]})
        yield fs
        server.stop()


def test_s3_prefix_listing_and_reads(s3):
    refs = list(iter_inputs(["s3://corpus/imgs/", "s3://corpus/imgs/a.png"]))
    assert [r.key for r in refs] == ["s3://corpus/imgs/a.png", "s3://corpus/imgs/b.png", "s3://corpus/imgs/cut.png",
                                     "s3://corpus/imgs/a.png"]
    assert refs[0].size == len(_png(2)) and refs[0].mtime is not None and refs[3] == refs[0]
    assert read_input(refs[1]) == _png(1)
    img = prepare_image(read_input(refs[0]), refs[0].key)
    assert img.grid.num_patches >= 1


def test_s3_missing_truncated_and_oversized_objects_are_per_image_errors(s3):
    with pytest.raises(ImageError, match="s3://corpus/imgs/none.png: no such object"):
        read_input(InputRef("s3://corpus/imgs/none.png"))
    with pytest.raises(ImageError, match="s3://nobucket-here/a.png"):
        read_input(InputRef("s3://nobucket-here/a.png"))
    cut = read_input(InputRef("s3://corpus/imgs/cut.png"))  # stored truncated: read whole, fails to decode
    with pytest.raises(ImageError, match="cut.png.*(truncated|corrupt|decode)"):
        prepare_image(cut, "s3://corpus/imgs/cut.png")
    with pytest.raises(ImageError, match="truncated: read 200 of the 300 bytes"):
        read_input(InputRef("s3://corpus/imgs/cut.png", size=300))  # shorter than its listing said
    with pytest.raises(ImageError, match="over the limit of 100"):
        read_input(InputRef("s3://corpus/imgs/a.png"), InputLimits(max_bytes=100))
