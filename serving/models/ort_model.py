"""Triton Python-backend model running one ONNX graph with ONNX Runtime (the ``python-ort`` variant of
``spai_patch_encoder`` / ``spai_aggregator``; copied to <repo>/<model>/1/model.py).

Thin adapter around :class:`serving.ort_runner.OrtRunner`: requests of equal shape (dynamic batching) run
as one ONNX Runtime call. Input/output names come from config.pbtxt (generated from export/specs.py).
"""

import json
import os

import triton_python_backend_utils as pb_utils

from serving.ort_runner import OrtRunner, make_session


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        self.inputs = [t["name"] for t in config["input"]]
        outputs = [t["name"] for t in config["output"]]
        self.runner = OrtRunner(make_session(path, int(params.get("intra_op_threads", "0"))), outputs)

    def execute(self, requests):
        batch = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        try:
            results = self.runner.run_many(batch)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime errors become per-batch error responses
            error = pb_utils.TritonError(f"ONNX Runtime failed: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in out.items()])
                for out in results]
