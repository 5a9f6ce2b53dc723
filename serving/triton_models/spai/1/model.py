"""Triton Python-backend model ``spai``: encoded images in, scores out (the one source of this file; generated
repositories copy it).

A thin pb_utils adapter around :func:`serving.bls.score_entry_batch` (tested on CPU) over :mod:`spai.infer.scorer`,
the path every scorer shares: decode with limits, patch grid, chunked BLS calls to ``spai_patch_encoder``, padded
BLS calls to ``spai_aggregator``. ``execute`` is a coroutine:
it keeps up to ``in_flight`` encoder requests pending (``async_exec``), so that the next chunk is cut while the
earlier ones are encoded; the requests of one execute share chunks. The BLS requests ask for CPU outputs
(``preferred_memory``; TensorRT would otherwise answer in GPU memory). A bad image fails its own request with
INVALID_ARG; an encoder or aggregator failure answers the batch's good requests with INTERNAL (retryable).
Probabilities and decisions come from the calibration in the config parameters (the one
:class:`spai.model.calibration.Calibration`, as in-process); a request may name an ``operating_point``. Needs
``spai-deploy`` importable by the stub's Python (pip install, or PYTHONPATH as ``spai serve`` sets it).
"""

import json

import triton_python_backend_utils as pb_utils

from serving.bls import EntrySettings, error_code, output_array, pack_scores, score_entry_batch
from serving.instance import HeapTrimmer, limit_threads
from spai.errors import ServingError
from spai.infer.runners import Runner
from spai.model.specs import ATTENTION, LOGITS, PATCH_FEATURES


class BlsRunner(Runner):
    """Another model of this server, called through BLS, with the limits the repository configured for it."""

    def __init__(self, model, outputs, limits, input_dtypes=None, minimums=None):
        super().__init__(limits, input_dtypes, minimums)
        self.model, self.outputs, self.name = model, list(outputs), f"bls:{model}"

    def _request(self, feed):
        return pb_utils.InferenceRequest(
            model_name=self.model, requested_output_names=self.outputs,
            inputs=[pb_utils.Tensor(k, v) for k, v in feed.items()],
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0))

    def _outputs(self, response):
        if response.has_error():
            raise ServingError(f"{self.model} failed: {response.error().message()}")
        return {n: output_array(pb_utils.get_output_tensor_by_name(response, n), self.model) for n in self.outputs}

    def _infer(self, feed):
        return self._outputs(self._request(feed).exec())

    async def _infer_async(self, feed):
        return self._outputs(await self._request(feed).async_exec())


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.settings = EntrySettings.from_parameters(
            {k: v["string_value"] for k, v in config.get("parameters", {}).items()})
        s = self.settings
        limit_threads(s.threads)
        self.trimmer = HeapTrimmer(s.trim_heap_mb * 2**20)
        self.encoder = BlsRunner(s.encoder_model, [PATCH_FEATURES], s.encoder_limits(), s.encoder_dtypes(),
                                 s.encoder_minimums())
        self.aggregator = BlsRunner(s.aggregator_model, [LOGITS, ATTENTION] if s.attention else [LOGITS],
                                    s.aggregator_limits(), minimums=s.aggregator_minimums())

    async def execute(self, requests):
        images, flags, points = [], [], []
        for request in requests:
            images.append([bytes(b) for b in pb_utils.get_input_tensor_by_name(request, "image").as_numpy().ravel()])
            flag = pb_utils.get_input_tensor_by_name(request, "return_patch_scores")
            flags.append(bool(flag is not None and flag.as_numpy().any()))
            point = pb_utils.get_input_tensor_by_name(request, "operating_point")
            points.append(None if point is None else point.as_numpy())
        results, pixels = await score_entry_batch(images, points, self.settings, self.encoder, self.aggregator)
        responses = [self._response(r, f) for r, f in zip(results, flags)]
        del results, images
        self.trimmer.handled(pixels)  # after the batch's images are freed
        return responses

    def _response(self, result, with_attention):
        if isinstance(result, BaseException):
            error = pb_utils.TritonError(str(result), getattr(pb_utils.TritonError, error_code(result)))
            return pb_utils.InferenceResponse(output_tensors=[], error=error)
        arrays = pack_scores(result, with_attention)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in arrays.items()])
