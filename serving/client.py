"""Client side of ``spai score``: send encoded images to the ``spai`` model over HTTP or gRPC (tritonclient),
N requests in flight (threads), retries on connection errors and on the server's retryable errors (INTERNAL,
UNAVAILABLE), one :class:`spai.infer.scores.ImageScore` per image. Light: no torch.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from spai.corpus.inputs import InputRef, map_bounded, read_input
from spai.errors import ImageError, ServingError, detached
from spai.infer.prepare import InputLimits
from spai.infer.scores import ImageScore
from spai.lazy import lazy_import

tqdm = lazy_import("tqdm")
# What the client reads of one input: the server refuses more (spai.infer.prepare.SERVING_LIMITS) anyway.
CLIENT_LIMITS = InputLimits(max_bytes=64 * 2**20)

# Server answers worth a retry: INTERNAL (an encoder/aggregator failure), UNAVAILABLE (loading, overloaded).
RETRYABLE_STATUS = ("500", "503", "StatusCode.INTERNAL", "StatusCode.UNAVAILABLE")


def is_retryable(exc: Exception) -> bool:
    """A connection failure, or a server error that a later attempt may not meet (never a bad image)."""
    status = exc.status() if callable(getattr(exc, "status", None)) else None
    if status is not None and str(status) in RETRYABLE_STATUS:
        return True
    text = str(exc).lower()
    return isinstance(exc, (ConnectionError, OSError)) or "unavailable" in text or "connect" in text


class SpaiClient:
    """Scores encoded images with the ``spai`` model; one tritonclient per thread (safe with N threads).

    ``close()`` (or ``with SpaiClient(...) as client:``) closes the connections it opened: tritonserver's graceful
    stop waits for open keep-alive connections, idle ones too, up to its exit timeout (30 s by default)."""

    def __init__(self, url: str, protocol: str = "http", model: str = "spai", retries: int = 0,
                 timeout_s: float = 300.0) -> None:
        if protocol not in ("http", "grpc"):
            raise ServingError(f"unknown protocol {protocol!r}; use http or grpc.")
        self.url, self.protocol, self.model = url.removeprefix("http://").removeprefix("grpc://"), protocol, model
        self.retries, self.timeout_s = retries, timeout_s
        self._local = threading.local()
        self._opened: weakref.WeakSet = weakref.WeakSet()  # each thread's tritonclient, while it lives
        self._lock = threading.Lock()  # guards _local and _opened against close() from another thread

    def __enter__(self) -> SpaiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection this client opened, in any thread; a later call opens new ones. For when the
        requests have finished: a request still in flight on another thread fails."""
        with self._lock:
            opened, self._opened, self._local = list(self._opened), weakref.WeakSet(), threading.local()
        for client in opened:
            with contextlib.suppress(Exception):  # closing is best effort: the server may be gone already
                client.close()

    def _module(self):
        if self.protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
        return module

    def _client(self):
        with self._lock:
            local = self._local
            client = getattr(local, "client", None)
            if client is None:
                module = self._module()
                kwargs = {"network_timeout": self.timeout_s, "connection_timeout": self.timeout_s} \
                    if self.protocol == "http" else {}
                client = local.client = module.InferenceServerClient(self.url, **kwargs)
                self._opened.add(client)
        return client

    def infer(self, data: bytes, with_attention: bool = False, operating_point: str | None = None
              ) -> dict[str, np.ndarray]:
        """One image -> output arrays (probability, logit, decision, operating_point_name, num_patches[,
        patch_attention]), the decision at ``operating_point`` (None: the model's default), retrying on
        connection and retryable server errors; a request the server rejects raises ServingError with its
        message."""
        module = self._module()
        image = module.InferInput("image", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[data]], dtype=object))
        inputs = [image]
        names = ["probability", "logit", "decision", "operating_point_name", "num_patches"] + \
            (["patch_attention"] if with_attention else [])
        if with_attention:
            flag = module.InferInput("return_patch_scores", [1, 1], "BOOL")
            flag.set_data_from_numpy(np.array([[True]]))
            inputs.append(flag)
        if operating_point:
            point = module.InferInput("operating_point", [1, 1], "BYTES")
            point.set_data_from_numpy(np.array([[operating_point.encode()]], dtype=object))
            inputs.append(point)
        outputs = [module.InferRequestedOutput(n) for n in names]
        for attempt in range(self.retries + 1):
            try:
                result = self._client().infer(self.model, inputs, outputs=outputs)
                return {n: result.as_numpy(n) for n in names}
            except Exception as e:  # noqa: BLE001 - tritonclient raises several unrelated types
                # tritonclient raises from frames that hold the error their own traceback holds: a cycle that kept
                # this client and its keep-alive connection until the next collection, and tritonserver's graceful
                # stop waits for open connections (30 s).
                detached(e)
                if attempt < self.retries and is_retryable(e):
                    time.sleep(min(2.0 ** attempt * 0.5, 10.0))
                    continue
                msg = e.message() if hasattr(e, "message") and callable(e.message) else str(e)
                raise ServingError(msg or repr(e)) from e
        raise AssertionError("unreachable")

    def score_file(self, path: str | Path | InputRef, with_attention: bool = False,
                   operating_point: str | None = None) -> ImageScore:
        """Score one file or URL; failures become the score's ``error`` (never raised)."""
        ref = path if isinstance(path, InputRef) else InputRef(str(path))
        start = time.perf_counter()
        try:
            out = self.infer(read_input(ref, CLIENT_LIMITS), with_attention, operating_point)
        except (ServingError, ImageError) as e:
            return ImageScore(ref.key, latency_ms=(time.perf_counter() - start) * 1e3, error=str(e).strip(),
                              size_bytes=ref.size, mtime=ref.mtime)
        n = int(out["num_patches"][0, 0])
        point = out["operating_point_name"][0, 0]
        return ImageScore(ref.key, float(out["probability"][0, 0]), float(out["logit"][0, 0]), n,
                          (time.perf_counter() - start) * 1e3,
                          attention=out["patch_attention"][0, :n] if with_attention else None,
                          decision=bool(out["decision"][0, 0]),
                          operating_point=point.decode() if isinstance(point, bytes) else str(point),
                          size_bytes=ref.size, mtime=ref.mtime)

    def score_stream(self, refs: Iterable[InputRef | str | Path], concurrency: int = 1,
                     with_attention: bool = False, operating_point: str | None = None,
                     window: int | None = None) -> Iterator[ImageScore]:
        """Scores in input order, ``concurrency`` requests in flight and at most ``window`` (default twice that)
        inputs taken from ``refs`` ahead: bounded memory however long ``refs`` is."""
        def task(ref: InputRef | str | Path) -> ImageScore:
            return self.score_file(ref, with_attention, operating_point)
        for _, future in map_bounded(task, refs, window or 2 * max(1, concurrency), concurrency):
            yield future.result()

    def score_paths(self, paths: Sequence[str | Path], concurrency: int = 1, with_attention: bool = False,
                    progress: bool = True, on_row: Callable[[ImageScore], None] | None = None,
                    operating_point: str | None = None) -> list[ImageScore]:
        """Score files with ``concurrency`` requests in flight (decisions at ``operating_point``, None: the
        model's default); results in input order."""
        rows = []
        with tqdm.tqdm(total=len(paths), disable=not progress, unit="img", desc="scoring") as bar:
            for row in self.score_stream(paths, concurrency, with_attention, operating_point):
                if on_row:
                    on_row(row)
                rows.append(row)
                bar.update()
        return rows
