"""Route table per checkpoint: each CPU route's gate verdict on this machine and what ``--precision auto`` takes
under the AMX, VNNI and plain AVX2 orderings, printed as markdown (docs/benchmarks.md, "Route table").

    .venv/bin/python tools/route_table.py [--trained CKPT] [--models spai-b16 spai-fusion-b16] [-o table.md]

Each model is exported (fp32 + int8 graphs) into a temporary folder, and :func:`spai.infer.routes.choose_route` gates
and probes every route once on this CPU, with this CPU's kernels: int8 and bf16 accuracy are those of the machine
that runs them. The AMX / VNNI / AVX2 columns then replay ``auto`` with each ordering's candidates
(``SPAI_CPU_FLAGS``), over the verdicts and speeds measured here, copied under each ordering's CPU name in a
scratch copy of the evidence (nothing is measured twice, and nothing claims to be another CPU's measurement).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ORDERINGS = {"AMX": frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"}),
             "VNNI": frozenset({"avx2", "avx512f", "avx512_vnni"}),
             "AVX2": frozenset({"avx2"})}
ROUTE_NAMES = ("torch-fp32", "torch-bf16", "ort-fp32", "ort-int8")


def model_for(name: str) -> Any:
    """A checkpoint file's model, or a config's with seeded random weights."""
    import torch

    import spai

    if Path(name).is_file():
        return spai.create_model(checkpoint=name)
    torch.manual_seed(0)
    return spai.create_model(name)


def measured_row(label: str, model: Any, folder: Path) -> dict[str, Any]:
    """Gate and probe every route once on this CPU; then ``auto`` under each ordering."""
    from export.onnx import onnx_from_torch
    from export.quantize import patch_encoder_int8
    from spai.infer.cpu import cpu_flags, cpu_identity
    from spai.infer.evidence import evidence_for
    from spai.infer.routes import choose_route
    from spai.model.specs import EVIDENCE_FILE

    graphs = onnx_from_torch(model, folder)
    patch_encoder_int8(graphs.patch_encoder)
    here = cpu_flags() | {"avx512_bf16"}  # bf16 gated here even where it is emulated (its speed says so)
    identity = cpu_identity(cpu_flags())
    print(f"[{label}] gating and probing its routes on this CPU ...", file=sys.stderr, flush=True)
    choose_route(model, onnx_dir=folder, flags=cpu_flags())
    evidence = evidence_for(model, folder)
    if cpu_identity(here) != identity:  # this CPU lacks native bf16: gate it all the same, under its own name
        choose_route(model, onnx_dir=folder, flags=here)
        evidence = evidence_for(model, folder)
        evidence.cpus[identity] = evidence.cpus[cpu_identity(here)]
    measured = evidence.cpus[identity]
    row = {"model": label, "cpu": identity, "verdicts": measured["verdicts"], "speeds": measured["speeds"]}
    scratch = Path(shutil.copytree(folder, folder.parent / f"{folder.name}-orderings"))
    data = json.loads((scratch / EVIDENCE_FILE).read_text())
    data["cpus"].update({cpu_identity(flags): measured for flags in ORDERINGS.values()})
    (scratch / EVIDENCE_FILE).write_text(json.dumps(data))
    row["auto"] = {name: choose_route(model, onnx_dir=scratch, flags=flags).name for name, flags in ORDERINGS.items()}
    return row


def verdict_cell(row: dict[str, Any], route: str) -> str:
    """``pass 3.1e-03`` / ``FAIL 0.039`` (max |dp| over random patches and images) and the probed speed."""
    if route == "torch-fp32":
        verdict = "reference"
    else:
        v = row["verdicts"].get(route)
        if v is None:
            return "not gated"
        worst = max((v[k]["max_abs_dprob"] for k in ("random_patches", "images") if v.get(k)), default=float("nan"))
        verdict = f"{'pass' if v['passed'] else 'FAIL'} {worst:.2g}"
    speed = row["speeds"].get(route, {}).get("patches_per_s")
    return verdict + (f", {speed:.3g} p/s" if speed else "")


def markdown_from_rows(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | " + " | ".join(ROUTE_NAMES) + " | auto: AMX | auto: VNNI | auto: AVX2 |",
             "|---" * (len(ROUTE_NAMES) + 4) + "|"]
    for row in rows:
        cells = [verdict_cell(row, r) for r in ROUTE_NAMES] + [row["auto"][k] for k in ORDERINGS]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    cpus = sorted({row["cpu"] for row in rows})
    lines.append("")
    lines.append(f"Measured on {', '.join(cpus)}: each cell is the gate's verdict (max |Δp| over random patches and "
                 "images; gates 1e-2 for bf16 and int8) and the route's probed encoder speed (patches/s, "
                 f"{'this machine'}); auto replays each ordering's candidates over these verdicts and speeds.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--trained", help="a trained checkpoint (e.g. demo_output/train/best.pth)")
    p.add_argument("--models", nargs="*", default=["spai-b16", "spai-fusion-b16"],
                   help="configs scored with seeded random weights")
    p.add_argument("-o", "--output", help="also write the markdown here")
    args = p.parse_args(argv)
    logging.basicConfig(format="  %(message)s")  # the library's progress (spai.infer: gating, probing) on stderr
    logging.getLogger("spai").setLevel(logging.INFO)
    sources = ([("trained demo (spai-tiny)", args.trained)] if args.trained else []) + \
        [(f"{m} (random)", m) for m in args.models]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, source) in enumerate(sources):
            rows.append(measured_row(label, model_for(source), Path(tmp) / f"model{i}"))
            print(markdown_from_rows(rows), file=sys.stderr, flush=True)  # so far, in case a later one fails
    text = markdown_from_rows(rows)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
