"""How a python-ort graph model runs a dynamic batch (testable without pb_utils): ONNX Runtime calls of at most
``max_ort_batch`` rows, whatever Triton's ``max_batch_size`` lets the batcher merge, so that ONNX Runtime's arena
is sized by that bound instead of by the largest batch ever merged (on a CPU a bigger call is not faster)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spai.infer.runners import Feed, Runner


def infer_in_slices(runner: Runner, feeds: Sequence[Feed], max_rows: int | None) -> list[Feed]:
    """``runner.infer_many(feeds)`` with every feed of more than ``max_rows`` rows run in slices of at most that
    many (the runner declares ``max_rows``); each feed's outputs are joined again, in order."""
    if not max_rows:
        return runner.infer_many(feeds)
    pieces: list[Feed] = []
    owners: list[int] = []
    for i, feed in enumerate(feeds):
        rows = len(next(iter(feed.values())))
        for start in range(0, max(rows, 1), max_rows):
            pieces.append({k: v[start:start + max_rows] for k, v in feed.items()})
            owners.append(i)
    outputs = runner.infer_many(pieces)
    joined: list[list[Feed]] = [[] for _ in feeds]
    for owner, out in zip(owners, outputs):
        joined[owner].append(out)
    return [parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            for parts in joined]
