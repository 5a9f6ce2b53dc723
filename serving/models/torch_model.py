"""Triton Python-backend model running one graph of a SPAI checkpoint in PyTorch (the ``python-torch`` variant of
``spai_patch_encoder`` / ``spai_aggregator``; copied to <repo>/<model>/1/model.py).

A thin adapter around :class:`serving.models.torch_graph.TorchGraph` (tested on CPU): the config's ``graph``
parameter picks the encoder or the aggregator of the checkpoint named by ``checkpoint`` (the repository's one
copy, read by both models). A KIND_GPU instance runs on its own device under ``torch.autocast`` in the config's
``precision`` (fp16 / bf16; fp32: no autocast); a KIND_CPU instance runs fp32 with the config's ``threads``. The
requests of a dynamic batch whose shapes agree run together, in calls of at most ``max_torch_batch`` rows.
Input/output names come from config.pbtxt (generated from :mod:`spai.model.specs`).
"""

import json

import triton_python_backend_utils as pb_utils

from serving.instance import instance_count
from serving.models.torch_graph import GraphSettings, TorchGraph, device_from_instance


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        settings = GraphSettings.from_parameters(params, args["model_repository"],
                                                 int(config.get("max_batch_size", 0)))
        device = device_from_instance(args.get("model_instance_kind", "CPU"), args.get("model_instance_device_id", 0))
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        self.graph = TorchGraph(settings, device, instance_count(config))

    def execute(self, requests):
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        try:
            results = self.graph.infer(feeds)
        except Exception as e:  # noqa: BLE001 - PyTorch errors (CUDA OOM included) become this batch's errors
            error = pb_utils.TritonError(f"PyTorch failed: {e}", pb_utils.TritonError.INTERNAL)
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        return [pb_utils.InferenceResponse([pb_utils.Tensor(k, out[k]) for k in self.outputs if k in out])
                for out in results]
