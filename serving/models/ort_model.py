"""Triton Python-backend model running one ONNX graph with ONNX Runtime (the ``python-ort`` variant of
``spai_patch_encoder`` / ``spai_aggregator``; copied to <repo>/<model>/1/model.py).

A thin adapter around :class:`spai.infer.runners.OrtRunner`: the requests of a dynamic batch whose shapes agree run as
one ONNX Runtime call (:meth:`spai.infer.runners.Runner.infer_many`), within the config's ``max_batch_size``.
Input/output names come from config.pbtxt (generated from :mod:`spai.model.specs`). Each instance runs ONNX Runtime
and OpenMP/BLAS with the config's ``threads`` (0: the cores shared among the instances, :mod:`serving.instance`),
in calls of at most ``max_ort_batch`` rows (:mod:`serving.models.batching`: bounds ONNX Runtime's arena). The
encoder's graph is the fp32 or the int8 one (config parameter ``precision``, chosen by ``spai repository
--precision``); the int8 graph runs one patch a call (``max_ort_batch`` 1), as the in-process int8 route does,
because its activations are quantised per call.
"""

import json
import os

import triton_python_backend_utils as pb_utils

from serving.instance import instance_count, instance_threads, limit_threads
from serving.models.batching import infer_in_slices
from spai.infer.runners import OrtRunner, preferred_providers


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        self.max_rows = limit = int(params.get("max_ort_batch", "0")) or int(config.get("max_batch_size", 0)) or None
        requested = int(params.get("threads", params.get("intra_op_threads", "0")))
        threads = limit_threads(instance_threads(requested, instance_count(config)))
        self.runner = OrtRunner(path, preferred_providers(), threads,
                                limits={name: (limit,) for name in self.inputs}).__enter__()

    def execute(self, requests):
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        try:
            results = infer_in_slices(self.runner, feeds, self.max_rows)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime errors become error responses of this batch
            error = pb_utils.TritonError(f"ONNX Runtime failed: {e}", pb_utils.TritonError.INTERNAL)
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        return [pb_utils.InferenceResponse([pb_utils.Tensor(k, out[k]) for k in self.outputs if k in out])
                for out in results]

    def finalize(self):
        self.runner.__exit__(None, None, None)
