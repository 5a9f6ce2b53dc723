"""Every generated config.pbtxt parses into Triton's ModelConfig and matches export/specs.py."""

from __future__ import annotations

import json
import sys

import pytest
from helpers import parse_pbtxt as parse

from serving.repository import (
    AGGREGATOR,
    CHECKED_IN,
    ENCODER,
    ENTRY,
    ENTRY_INPUTS,
    ENTRY_OUTPUTS,
    TORCH_VARIANT,
    VARIANTS,
    RepositoryOptions,
    config_text,
    production_options,
    read_config,
    write_configs,
)
from spai.model.specs import DEFAULT_MAX_BATCH, DEFAULT_MAX_IMAGES, aggregator_spec, patch_encoder_spec, trt_profile

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
pytest.importorskip("google.protobuf.text_format")

PLATFORM = {"trt": ("tensorrt_plan", ""), "onnx": ("onnxruntime_onnx", ""), "python-ort": ("", "python")}



def dtype_name(t) -> str:
    return t.triton_dtype


def assert_io(tensors, specs):
    assert [t.name for t in tensors] == [s.name for s in specs]
    for t, s in zip(tensors, specs):
        assert model_config_pb2.DataType.Name(t.data_type) == s.triton_dtype, t.name
        assert tuple(t.dims) == s.shape, t.name


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("attention", [False, True])
def test_generated_configs_match_specs(tmp_path, variant, attention):
    opts = RepositoryOptions(variant=variant, feature_dim=96, attention=attention)
    root = write_configs(tmp_path, opts)
    platform, backend = PLATFORM[variant]
    maxima = {ENCODER: DEFAULT_MAX_BATCH, AGGREGATOR: DEFAULT_MAX_IMAGES}
    for name, spec in ((ENCODER, patch_encoder_spec(96)), (AGGREGATOR, aggregator_spec(96))):
        cfg = parse(root / name / "config.pbtxt")
        assert (cfg.name, cfg.platform, cfg.backend) == (name, platform, backend)
        assert cfg.max_batch_size == maxima[name] == next(iter(trt_profile(spec).values()))[2][0]
        assert_io(cfg.input, spec.inputs)
        outputs = [o.name for o in cfg.output]
        expected = [o.name for o in spec.outputs if attention or o.name != "attention"]
        assert outputs == expected
        assert ("attention" in outputs) == (attention and name == AGGREGATOR)
        assert cfg.HasField("dynamic_batching")
        kind = model_config_pb2.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind)
        assert kind == ("KIND_GPU" if variant == "trt" else "KIND_CPU")
        assert bool(cfg.model_warmup) == (variant == "trt")
    entry = parse(root / ENTRY / "config.pbtxt")
    assert (entry.backend, entry.max_batch_size > 0) == ("python", True)
    assert_io(entry.input, ENTRY_INPUTS)
    assert_io(entry.output, ENTRY_OUTPUTS)
    assert [i.optional for i in entry.input] == [False, True, True]  # image, return_patch_scores, operating_point
    assert entry.parameters["aggregator_attention"].string_value == str(attention)
    assert (root / ENTRY / "1" / "model.py").is_file()


def test_trt_warmup_fits_profile(tmp_path):
    root = write_configs(tmp_path, production_options())
    for name in (ENCODER, AGGREGATOR):
        cfg = parse(root / name / "config.pbtxt")
        warm = cfg.model_warmup[0]
        assert 1 <= warm.batch_size <= cfg.max_batch_size
        assert set(warm.inputs) == {i.name for i in cfg.input}
        opt = {k: v[1] for k, v in trt_profile(patch_encoder_spec(1168) if name == ENCODER
                                               else aggregator_spec(1168)).items()}
        assert {k: (warm.batch_size, *v.dims) for k, v in warm.inputs.items()} == opt


def test_checked_in_layout_equals_generated(tmp_path):
    fresh = write_configs(tmp_path, production_options())
    generated = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    checked = sorted(p.relative_to(CHECKED_IN) for p in CHECKED_IN.rglob("*")
                     if p.is_file() and p.suffix in (".pbtxt", ".py"))
    assert checked == generated, "run `spai repository --checked-in`"
    for rel in generated:
        assert (CHECKED_IN / rel).read_text() == (fresh / rel).read_text(), rel


def test_build_repository_errors(tmp_path):
    from serving.repository import build_repository
    from spai.errors import ServingError

    with pytest.raises(ServingError, match="missing export outputs"):
        build_repository(tmp_path, "trt", tmp_path / "repo")
    with pytest.raises(ServingError, match="unknown variant"):
        build_repository(tmp_path, "torch", tmp_path / "repo")


def test_build_repository_from_export(tiny_onnx_dir, tmp_path):
    from serving.repository import build_repository

    root = build_repository(tiny_onnx_dir, "onnx", tmp_path / "repo")
    cfg = parse(root / AGGREGATOR / "config.pbtxt")
    assert cfg.input[0].dims[-1] == 96 and [o.name for o in cfg.output] == ["logits", "attention"]
    assert (root / ENCODER / "1" / "model.onnx").is_file()


def test_a_calibrated_export_gives_the_entry_model_its_calibration(tiny_onnx_dir, tmp_path):
    import shutil

    from serving.bls import EntrySettings
    from serving.repository import build_repository
    from spai.model.calibration import Calibration, OperatingPoint, write_export_calibration

    art = shutil.copytree(tiny_onnx_dir, tmp_path / "export")
    cal = Calibration("temperature", 0.123, 0.0, (OperatingPoint("fpr0.05", 0.61), OperatingPoint("balanced", 0.4)),
                      "fpr0.05")
    write_export_calibration(cal, art)
    entry = parse(build_repository(art, "python-ort", tmp_path / "repo") / ENTRY / "config.pbtxt")
    params = {k: v.string_value for k, v in entry.parameters.items()}
    assert EntrySettings.from_parameters(params).calibration == cal
    assert json.loads(params["calibration"]) == cal.to_entry()  # one JSON parameter carries all of it
    assert not {"calibration_method", "temperature", "operating_points"} & set(params)
    plain = parse(build_repository(tiny_onnx_dir, "python-ort", tmp_path / "plain") / ENTRY / "config.pbtxt")
    assert "calibration" not in plain.parameters  # uncalibrated: probability = sigmoid(logit), as before


@pytest.mark.parametrize("value, says", [("{not json", "JSONDecodeError"), ("[1, 2]", "not a JSON object"),
                                         ('{"method": "platt", "temperature": -1, "default": "x"}', "temperature"),
                                         ('{"method": "platt", "temperature": 1, "operating_points": ["a"]}',
                                          "AttributeError")])
def test_a_malformed_calibration_parameter_names_it_and_the_fix(value, says):
    from serving.bls import EntrySettings
    from spai.errors import ServingError

    with pytest.raises(ServingError, match=rf"parameter calibration=.* is malformed .*{says}.*rebuild the repository"):
        EntrySettings.from_parameters({"calibration": value})


def test_the_calibration_parameters_of_an_older_repository_are_refused_not_ignored():
    from serving.bls import EntrySettings
    from spai.errors import ServingError

    old = {"calibration_method": "platt", "temperature": "0.5", "bias": "0.0", "default_operating_point": "p0.5",
           "operating_points": "p0.5=0.5"}
    with pytest.raises(ServingError, match="calibration_method, temperature.*older `spai repository`.*rebuild"):
        EntrySettings.from_parameters(old)


@pytest.mark.parametrize("variant", [*VARIANTS, TORCH_VARIANT], ids=lambda v: f"{v}-variant")  # not marked trt
def test_configs_are_text_format_of_a_model_config_and_read_back_unchanged(tmp_path, variant):
    """Each file is ModelConfig printed by serving.repository.config_text: parsing and printing it again gives
    the same bytes; parameters one a line, in the form serving/deploy/tritonserver.py and the docs show."""
    opts = production_options() if variant == "trt" else RepositoryOptions(variant=variant, feature_dim=96)
    root = write_configs(tmp_path, opts)
    for name in (ENTRY, ENCODER, AGGREGATOR):
        text = (root / name / "config.pbtxt").read_text()
        assert config_text(read_config(root / name / "config.pbtxt")) == text, name
        assert read_config(root / name / "config.pbtxt") == parse(root / name / "config.pbtxt")
    entry = (root / ENTRY / "config.pbtxt").read_text()
    assert f'parameters {{ key: "in_flight" value {{ string_value: "{opts.tuning.in_flight}" }} }}' in entry
    assert "instance_group { count: " in entry


def test_a_config_that_is_no_model_config_is_refused_with_the_fix(tmp_path):
    from serving.server import describe_repository
    from spai.errors import ServingError

    root = write_configs(tmp_path, RepositoryOptions(variant="python-ort", feature_dim=96))
    (root / ENCODER / "config.pbtxt").write_text('name: "x"\nmax_batch: 3\n')
    with pytest.raises(ServingError, match=r"spai_patch_encoder/config.pbtxt is not a Triton model config .*"
                                           r"max_batch.*rebuild the repository"):
        describe_repository(root)


def test_describe_repository_reads_the_configs(tmp_path):
    from serving.server import describe_repository

    models = describe_repository(write_configs(tmp_path, production_options()))
    assert models[ENCODER] == {"backend": "tensorrt_plan", "instances": 2, "kind": "KIND_GPU", "max_batch_size": 256,
                               "queue_delay_us": 500, "preferred_batch_size": "128"}
    assert models[ENTRY]["backend"] == "python" and models[ENTRY]["instances"] == 4
    assert (models[ENTRY]["kind"], models[ENTRY]["in_flight"], models[ENTRY]["threads"]) == ("KIND_CPU", "4", "1")


def test_without_tritonclient_configs_fail_saying_what_to_install(tmp_path, monkeypatch):
    from spai.errors import ServingError

    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # import raises ImportError
    with pytest.raises(ServingError, match=r"pip install 'tritonclient\[grpc\]' protobuf"):
        write_configs(tmp_path, production_options())
