"""Malicious pickles, TorchScript archives, unknown layouts, backbone-only files, `spai convert`, ONNX export."""

from __future__ import annotations

import builtins
import os
import warnings
import zipfile

import numpy as np
import pytest
import torch

import spai
from spai.errors import CheckpointError
from spai_cli import main
from tests.spai.model.importers.helpers import clip_full_state, install_fake_yacs, save_original, upstream_config, upstream_layout


class _SystemPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvalPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return builtins.eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("payload", [_SystemPayload, _EvalPayload])
def test_malicious_pickle_is_refused_without_running(tmp_path, payload):
    marker = tmp_path / "marker"
    cfg = install_fake_yacs()({"MODEL": {"NAME": "x"}})
    cfg["hook"] = payload(marker)  # hidden inside the yacs config, next to real tensors
    torch.save({"model": {"w": torch.zeros(2)}, "config": cfg}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"refused.*(posix\.system|builtins\.eval)"):
        spai.create_model(checkpoint=tmp_path / "evil.pth")
    assert not marker.exists()


def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "ViT-B-16.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(CheckpointError, match="TorchScript.*open_clip"):
        spai.create_model("spai-tiny", checkpoint=path)


def test_unknown_layout_names_closest_format(tmp_path):
    sd = upstream_layout(w=64, depth=2, p=16, heads=2, embed=16, ratio=1)
    sd = {k.replace("mfvit.vit.blocks.", "mfvit.vit.layers."): v for k, v in sd.items()}
    torch.save({"model": sd}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"Closest known format: upstream SPAI.*mfvit\.vit\.blocks\.#.*"
                                              r"mfvit\.vit\.layers\.#"):
        spai.create_model(checkpoint=tmp_path / "odd.pth")


def test_bare_clip_loads_backbone_only_with_warning(tmp_path):
    sd = clip_full_state("spai-tiny-vit", seed=2)  # whole CLIP: visual.* + text tower (declared unused)
    torch.save(sd, tmp_path / "clip.pt")
    with pytest.raises(CheckpointError, match="only backbone weights"):
        spai.create_model(checkpoint=tmp_path / "clip.pt")
    with pytest.warns(UserWarning, match="backbone only"):
        model = spai.create_model("spai-tiny", checkpoint=tmp_path / "clip.pt")
    own = model.state_dict()
    assert torch.equal(own["mfvit.vit.clip.visual.conv1.weight"], sd["visual.conv1.weight"])


def test_mfm_pretrain_loads_backbone(tmp_path):
    sd = upstream_layout(w=64, depth=4, p=48, heads=4, embed=64, ratio=2)
    enc = {"encoder." + k[len("mfvit.vit."):]: v for k, v in sd.items()
           if k.startswith("mfvit.vit.") and not k.startswith(("mfvit.vit.cls_pos", "mfvit.vit.cls_blocks", "mfvit.vit.actual",
                                                               "mfvit.vit.intermediate", "mfvit.vit.head",
                                                               "mfvit.vit.fc_norm"))}
    enc["encoder.norm.weight"], enc["decoder.pred.weight"] = torch.ones(64), torch.zeros(3, 64)
    torch.save({"model": enc}, tmp_path / "mfm.pth")
    cfg = upstream_config(64, 4, 4, 48, 4, 64, 2)
    named = {"MODEL_WEIGHTS": "mfm", "MODEL": {k: cfg["MODEL"][k] for k in ("VIT", "PATCH_VIT", "CLS_HEAD")}}
    named["MODEL"]["VIT"] = {k: v for k, v in named["MODEL"]["VIT"].items() if k in spai.get_config().MODEL.VIT}
    with warnings.catch_warnings(record=True):
        model = spai.create_model(named, checkpoint=tmp_path / "mfm.pth")
    assert torch.equal(model.state_dict()["mfvit.vit.blocks.3.attn.q_bias"], sd["mfvit.vit.blocks.3.attn.q_bias"])
    backbone = spai.create_model(named, pretrained=tmp_path / "mfm.pth").mfvit.vit
    assert torch.equal(backbone.pos_embed, sd["mfvit.vit.pos_embed"])


def test_convert_then_native_load_and_onnx_parity(tmp_path):
    sd = upstream_layout(w=64, depth=4, p=48, heads=4, embed=64, ratio=2)
    src = save_original(tmp_path / "spai.pth", sd, upstream_config(64, 4, 4, 48, 4, 64, 2))
    assert main(["convert", str(src), str(tmp_path / "native.pth")]) == 0
    assert "data.pkl" in "".join(zipfile.ZipFile(tmp_path / "native.pth").namelist())
    model, state = spai.load_checkpoint(tmp_path / "native.pth")  # weights_only=True path: plain dicts only
    assert state["epoch"] == 9 and state["source_format"] == "upstream-spai"
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model.encode_patches(x).numpy()
    got = _onnx_run(model, x, tmp_path / "enc.onnx")
    assert np.abs(got - want).max() < 1e-4


def _onnx_run(model, x, path):
    ort = pytest.importorskip("onnxruntime")

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, patches):
            return self.m.encode_patches(patches)

    torch.onnx.export(Encoder(model).eval(), (x,), str(path), input_names=["patches"], output_names=["features"],
                      dynamo=False, opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"patches": x.numpy()})[0]
