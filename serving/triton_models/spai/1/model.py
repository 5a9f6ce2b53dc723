"""Triton Python-backend model ``spai`` (copied to <repo>/spai/1/model.py by serving/repository.py).

Thin pb_utils <-> numpy adapter: the work is in :mod:`serving.pipeline` (decode with limits, patchify,
chunked BLS calls to ``spai_patch_encoder``, one padded BLS call to ``spai_aggregator``). A bad request gets
its own TritonError response; the other requests of the batch are scored normally. Needs ``spai-deploy``
importable by the stub's Python (pip install, or PYTHONPATH as ``spai serve`` sets it).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from serving.pipeline import PipelineSettings, pack_results, score_requests
from spai.errors import ServingError, SPAIError


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.settings = PipelineSettings.from_parameters(params)
        self.encoder_model = params.get("encoder_model", "spai_patch_encoder")
        self.aggregator_model = params.get("aggregator_model", "spai_aggregator")
        self.attention = params.get("aggregator_attention", "False").lower() == "true"

    def execute(self, requests):
        blobs, flags = [], []
        for request in requests:
            blobs.append(list(pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)))
            flag = pb_utils.get_input_tensor_by_name(request, "return_patch_scores")
            flags.append(bool(flag is not None and flag.as_numpy().any()))
        try:
            results = score_requests(blobs, self.settings, self._encode, self._aggregate)
        except SPAIError as e:
            results = [e] * len(requests)
        return [self._response(r, f) for r, f in zip(results, flags)]

    def _response(self, result, with_attention):
        if isinstance(result, SPAIError):
            code = getattr(pb_utils.TritonError, "INVALID_ARG", None)  # -> HTTP 400 (Triton >= 23.x)
            message = str(result)
            error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
            return pb_utils.InferenceResponse(output_tensors=[], error=error)
        arrays = pack_results(result, with_attention)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in arrays.items()])

    def _call(self, model, inputs, outputs):
        request = pb_utils.InferenceRequest(model_name=model, requested_output_names=outputs,
                                            inputs=[pb_utils.Tensor(k, v) for k, v in inputs.items()])
        response = request.exec()
        if response.has_error():
            raise ServingError(f"{model} failed: {response.error().message()}")
        return [pb_utils.get_output_tensor_by_name(response, o).as_numpy() for o in outputs]

    def _encode(self, patches):
        return self._call(self.encoder_model, {"patches": patches}, ["patch_features"])[0]

    def _aggregate(self, features, mask):
        outputs = ["logits", "attention"] if self.attention else ["logits"]
        values = self._call(self.aggregator_model, {"patch_features": features, "patch_mask": mask}, outputs)
        return values[0], (np.asarray(values[1]) if self.attention else None)
