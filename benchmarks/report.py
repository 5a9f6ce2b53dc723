"""Turn pytest-benchmark JSON into a Markdown report with ratios to the baseline, and PNG plots.

Usage: ``python benchmarks/report.py run1.json [run2.json ...] [-o DIR]`` -> ``DIR/report.md`` and ``DIR/*.png``
(DIR defaults to the first JSON's folder). Throughputs are recomputed from each case's median. Each JSON is one
run: ratios are only taken between cases of the same run, and a run whose matmul probe fell more than 20% below its
best (a loaded machine) gets no ratios at all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from spai.lazy import lazy_import

matplotlib = lazy_import("matplotlib")
plt = lazy_import("matplotlib.pyplot")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: export.compare formats the parity tables
    sys.path.insert(0, str(ROOT))

Row = dict[str, Any]
GPU_DTYPE = {"baseline": "fp32", "torch-fp32": "fp32"}


def load_rows(path: Path) -> tuple[dict[str, Any], list[Row]]:
    """The JSON document and one flat row per benchmark (extra_info + name, group, median, mean, stddev, and
    ``run``: the file's stem, since ratios are only ever taken within one run)."""
    doc = json.loads(Path(path).read_text())
    rows = []
    for b in doc.get("benchmarks", []):
        st = b["stats"]
        rows.append({**b.get("extra_info", {}), "name": b["name"], "group": b.get("group") or "",
                     "median": st["median"], "min": st["min"], "mean": st["mean"], "stddev": st["stddev"],
                     "rounds": st["rounds"], "run": Path(path).stem})
    return doc, rows


def machine_lines(doc: dict[str, Any]) -> list[str]:
    """Machine and commit info from pytest-benchmark's JSON header."""
    m, c = doc.get("machine_info", {}), doc.get("commit_info", {})
    cpu = m.get("cpu", {})
    return [f"- date: {doc.get('datetime', '?')}",
            f"- machine: {m.get('node', '?')}, {cpu.get('brand_raw', m.get('processor', '?'))}, "
            f"{cpu.get('count', '?')} logical CPUs, {m.get('system', '')} {m.get('release', '')}",
            f"- python {m.get('python_version', '?')} ({m.get('python_implementation', '')}), "
            f"commit {str(c.get('id', '?'))[:10]}{' (dirty)' if c.get('dirty') else ''}"]


def peaks(rows: list[Row]) -> dict[tuple[str, str], float]:
    """(device, dtype) -> the best GEMM FLOP/s measured (torch and ONNX Runtime GEMMs; best round; fp32, bf16 and
    int8 on CPU)."""
    best: dict[tuple[str, str], float] = {}
    for r in rows:
        if r.get("kind") == "peak":
            key = (r["device"], r["dtype"])
            best[key] = max(best.get(key, 0.0), r["flops_per_step"] / r["min"])
    return best


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def encoder_table(rows: list[Row]) -> tuple[list[str], list[Row]]:
    """Patches/s per backend x batch, as a ratio to the baseline of the same model/device/batch, and % of peak."""
    enc = [r for r in rows if r.get("kind") == "encoder"]
    base = {(r["run"], r["device"], r["model"], r["batch"]): r for r in enc if r["backend"] == "baseline"}
    pk, health = peaks(rows), run_health(rows)
    out = ["| device | model | batch | backend | patches/s | x baseline | x baseline (min) | GFLOP/s | % of peak | "
           "RSS peak MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(enc, key=lambda r: (r["device"], r["model"], r["batch"], r["backend"])):
        pps = r["batch"] / r["median"]
        r["patches_per_s"], key = pps, (r["run"], r["device"], r["model"], r["batch"])
        ok = key in base and not health.get(r["run"])
        r["ratio"] = base[key]["median"] / r["median"] if ok else None
        ratio_min = base[key]["min"] / r["min"] if ok else None  # robust to a busy machine
        flops = (r["baseline_flops_per_patch"] if r["backend"] == "baseline" else r["flops_per_patch"]) * pps
        suffix = r["backend"].split("-")[-1]
        dtype = (suffix if suffix in ("bf16", "int8") else "fp32") if r["device"].startswith("cpu") \
            else GPU_DTYPE.get(r["backend"], suffix)
        peak = pk.get((r["device"], dtype))
        r["pct_peak"] = 100 * flops / peak if peak else None
        out.append(f"| {r['device']} | {r['model']} | {r['batch']} | {r['backend']} | {pps:.3g} | "
                   f"{_fmt(r['ratio'])} | {_fmt(ratio_min)} | {flops / 1e9:.3g} | {_fmt(r['pct_peak'])} | "
                   f"{_fmt(r.get('rss_peak_mb'), 5)} |")
    return out, enc


def foundation_table(rows: list[Row]) -> list[str]:
    """encode_patches per-patch time / one bare CLIP pass, next to the FLOP ratio that explains it."""
    by_model: dict[str, dict[str, Row]] = defaultdict(dict)
    for r in rows:
        if r.get("kind") == "foundation":
            by_model[r["model"]][r["backend"]] = r
    out = ["| model | batch | bare CLIP s/patch | encode s/patch | time ratio | FLOP ratio | backbone (3 views) "
           "GFLOP | filter GFLOP | FRE GFLOP | bare GFLOP |", "|---|---|---|---|---|---|---|---|---|---|"]
    for model, pair in sorted(by_model.items()):
        if {"bare-clip", "encode-patches"} - pair.keys():
            continue
        bare, enc = pair["bare-clip"], pair["encode-patches"]
        tb, te = bare["median"] / bare["batch"], enc["median"] / enc["batch"]
        g = 1e9
        out.append(f"| {model} | {enc['batch']} | {tb:.3g} | {te:.3g} | **{te / tb:.2f}x** | "
                   f"{enc['encode_flops'] / enc['bare_clip_flops']:.2f}x | {enc['backbone_flops'] / g:.1f} | "
                   f"{enc['filter_flops'] / g:.2f} | {enc['fre_flops'] / g:.1f} | {enc['bare_clip_flops'] / g:.1f} |")
    return out


def resolution_table(rows: list[Row]) -> tuple[list[str], dict[str, list[Row]]]:
    """Seconds per image and per megapixel, with each size's deviation from the 1 MP figure."""
    res: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        if r.get("kind") == "resolution":
            res[r["model"]].append(r)
    out = ["| model | nominal MP | actual MP | patches | s/image | s/MP | vs 1 MP | RSS peak MB | RSS delta MB |",
           "|---|---|---|---|---|---|---|---|---|"]
    for model, rs in sorted(res.items()):
        rs.sort(key=lambda r: r["megapixels"])
        ref = next((r["median"] / r["megapixels"] for r in rs if r["nominal_mp"] == 1), None)
        for r in rs:
            spm = r["median"] / r["megapixels"]
            dev = f"{100 * (spm / ref - 1):+.1f}%" if ref else "-"
            out.append(f"| {model} | {r['nominal_mp']:g} | {r['megapixels']:.2f} | {r['patches']} | "
                       f"{r['median']:.3g} | {spm:.3g} | {dev} | {_fmt(r.get('rss_peak_mb'), 5)} | "
                       f"{_fmt(r.get('rss_delta_mb'), 4)} |")
    for r in rows:
        if r.get("kind") == "rss64":
            out.append(f"\nFresh process, {r['model']}, {r['megapixels']:.1f} MP: whole-process peak RSS "
                       f"(sampled) **{r['rss_peak_mb']:.0f} MB** ({r.get('rss_before_score_mb', 0):.0f} MB "
                       f"before scoring: interpreter, torch, model, image), scored in {r['score_seconds']:.1f} s.")
    return out, res


def aggregator_table(rows: list[Row]) -> list[str]:
    """Aggregator latency per number of patches."""
    agg = sorted((r for r in rows if r.get("kind") == "aggregator"), key=lambda r: r["patches"])
    out = ["| model | patches | ms | us/patch |", "|---|---|---|---|"]
    out += [f"| {r['model']} | {r['patches']} | {1e3 * r['median']:.3g} | {1e6 * r['median'] / r['patches']:.3g} |"
            for r in agg]
    return out


def other_table(rows: list[Row]) -> list[str]:
    """Benchmarks this report has no special table for (e.g. serving), with their medians."""
    known = {"encoder", "foundation", "resolution", "aggregator", "peak", "rss64", "route", "chunk", "parity",
             "bf16_keep"}
    rest = [r for r in rows if r.get("kind") not in known]
    out = ["| group | name | median ms | extra |", "|---|---|---|---|"]
    for r in rest:
        extra = {k: v for k, v in r.items() if k not in ("name", "group", "median", "min", "mean", "stddev", "rounds")}
        out.append(f"| {r['group']} | {r['name']} | {1e3 * r['median']:.4g} | {json.dumps(extra, default=str)[:160]} |")
    return out if rest else []


def targets(enc: list[Row], res: dict[str, list[Row]], rows: list[Row]) -> list[str]:
    """The CPU targets: best backend >= 2x baseline, s/MP within +-15 % from 1 to 64 MP, 64 MP in < 4 GB."""
    out = []
    cpu = [r for r in enc if r["device"].startswith("cpu") and r.get("ratio") and r["backend"] != "baseline"]
    for model in sorted({r["model"] for r in cpu}):
        best = max((r for r in cpu if r["model"] == model), key=lambda r: r["ratio"])
        ok = "met" if best["ratio"] >= 2 else "MISSED"
        out.append(f"- {model}: best CPU backend {best['backend']} at batch {best['batch']}: "
                   f"**{best['ratio']:.2f}x** baseline patches/s (target >= 2x: {ok})")
    for model, rs in sorted(res.items()):
        spm = [r["median"] / r["megapixels"] for r in rs if 1 <= r["nominal_mp"] <= 64]
        if len(spm) >= 2:
            centre = statistics.median(spm)
            spread = max(abs(s / centre - 1) for s in spm)
            ok = "met" if spread <= 0.15 else "MISSED"
            out.append(f"- {model}: s/MP from 1 to {max(r['nominal_mp'] for r in rs):g} MP deviates at most "
                       f"**{100 * spread:.1f}%** from their median {centre:.3g} s/MP (target +-15%: {ok})")
    for r in rows:
        if r.get("kind") == "rss64":
            ok = "met" if r["rss_peak_mb"] < 4096 else "MISSED"
            out.append(f"- {r['megapixels']:.0f} MP image, fresh process: peak RSS **{r['rss_peak_mb']:.0f} MB** "
                       f"(target < 4096 MB: {ok})")
    return out


PROBE_DROP = 0.2  # a run whose matmul probe fell more than this below its best was taken on a loaded machine
ROUTE_PEAK_DTYPE = {"fp32": "fp32", "bf16": "bf16", "int8": "int8"}


def run_health(rows: list[Row]) -> dict[str, str | None]:
    """run -> None if its matmul probes stayed within :data:`PROBE_DROP` of the run's best, else why not."""
    health: dict[str, str | None] = {}
    for run in sorted({r["run"] for r in rows}):
        probed = [r for r in rows if r["run"] == run and r.get("probe_gflops")]
        if not probed:
            health[run] = None
            continue
        best = max(max(r["probe_gflops"], r.get("probe_gflops_max", 0)) for r in probed)
        worst = min(probed, key=lambda r: r["probe_gflops"])
        drop = 1 - worst["probe_gflops"] / best
        health[run] = None if drop <= PROBE_DROP else (
            f"matmul probe fell to {worst['probe_gflops']:.0f} GFLOP/s ({100 * drop:.0f}% below the run's best "
            f"{best:.0f}) during {worst['name']}: the machine was loaded")
    return health


def _route_key(r: Row) -> tuple:
    return r["run"], r["model"], r["nominal_mp"]


def _prob(logit: float) -> float:
    import math

    return 1 / (1 + math.exp(-logit))


def route_rows(rows: list[Row]) -> list[Row]:
    """Route cases with images/s, the ratio to the original algorithm (one patch per call) of the same run, model
    and image, |delta p| against torch fp32 and % of the measured peak of the route's precision."""
    routes = [r for r in rows if r.get("kind") == "route"]
    health, every = run_health(rows), peaks(rows)
    own = {run: peaks([r for r in rows if r["run"] == run]) for run in {r["run"] for r in routes}}
    by_key: dict[tuple, dict[str, Row]] = defaultdict(dict)
    for r in routes:
        by_key[_route_key(r)][r["contender"]] = r
    for r in routes:
        same = by_key[_route_key(r)]
        r["images_per_s"] = 1 / r["median"]
        base, ref = same.get("original-1"), same.get("torch-fp32")
        r["refused"] = health.get(r["run"])
        r["ratio"] = None if base is None or r["refused"] else base["median"] / r["median"]
        originals = [o["median"] for name, o in same.items() if name.startswith("original")]
        r["ratio_best_original"] = None if not originals or r["refused"] else min(originals) / r["median"]
        r["dprob"] = None if ref is None else abs(_prob(r["logit"]) - _prob(ref["logit"]))
        r["flip"] = None if ref is None else (r["logit"] >= 0) != (ref["logit"] >= 0)
        key = (r["device"], ROUTE_PEAK_DTYPE.get(r["precision"], "fp32"))
        peak = own[r["run"]].get(key) or every.get(key)  # the run's own peak where it measured one
        r["gflops"] = r["flops_per_patch"] * r["patches"] / r["median"] / 1e9
        r["pct_peak"] = 100 * r["gflops"] * 1e9 / peak if peak else None
    return sorted(routes, key=lambda r: (r["run"], r["model"], r["nominal_mp"], r["contender"]))


def route_table(routes: list[Row]) -> list[str]:
    """One line per (model, image, contender): speed, the ratio to the named original, memory, parity."""
    out = ["| run | model | image | contender | images/s | x original (1 patch/call) | x best original | GFLOP/s | "
           "% of peak (its precision) | image peak RSS MB | process peak MB | torch loaded | abs dp vs torch fp32 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in routes:
        ratio = "refused" if r["refused"] else _fmt(r["ratio"])
        out.append(f"| {r['run']} | {r['model']} | {r['nominal_mp']:g} MP ({r['height']}x{r['width']}, "
                   f"{r['patches']} patches) | "
                   f"{r['contender']} | {r['images_per_s']:.3g} | {ratio} | "
                   f"{'refused' if r['refused'] else _fmt(r['ratio_best_original'])} | {r['gflops']:.3g} | "
                   f"{_fmt(r['pct_peak'])} | {r['peak_mb']:.0f} | {r['process_peak_mb']:.0f} | "
                   f"{'yes' if r['torch_loaded'] else 'no'} | {_fmt(r['dprob'], 2)} |")
    return out


def baseline_lines(routes: list[Row]) -> list[str]:
    """Which original algorithm each model's ratios are against."""
    named = {(r["model"], r["contender"], r["baseline"], r.get("chunk")) for r in routes if r.get("baseline")}
    return [f"- {model}: `{contender}` = {baseline}, {chunk} patch(es) per encoder call"
            for model, contender, baseline, chunk in sorted(named, key=lambda t: (t[0], t[1]))]


def parity_rows(rows: list[Row]) -> dict[tuple[str, str], dict[str, Any]]:
    """(model, route) -> the comparator's figures for it (any run: parity does not depend on the machine)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if r.get("kind") == "parity":
            for route, entry in r["report"]["backends"].items():
                failed = [f for f in r["report"]["failures"] if f.startswith(route + "/")]
                out[(r["model"], route)] = {**entry, "failures": failed}
    return out


def parity_table(rows: list[Row]) -> list[str]:
    """Per model: the comparator's table (:func:`export.compare.backends_table`), the set it ran on, its verdict."""
    from export.compare import backends_table

    out: list[str] = []
    for r in sorted((r for r in rows if r.get("kind") == "parity"), key=lambda r: r["model"]):
        labels = "labelled (AUC against the labels)" if r["labelled"] else "unlabelled (AUC against fp32 decisions)"
        verdict = "PASS" if r["passed"] else "FAIL: " + "; ".join(r["report"]["failures"])
        out += [f"{r['model']}: {r['random_patches']} random patches, {r['images']} images, {labels}: {verdict}", "",
                *backends_table(r["report"]["backends"]), ""]
    return out


def precision_lines(rows: list[Row]) -> list[str]:
    """Which layers run in which precision, per reduced-precision route (from the parity cases)."""
    out: list[str] = []
    for r in rows:
        if r.get("kind") != "parity" or not r.get("precision_layers"):
            continue
        bf16, int8 = r["precision_layers"].get("torch-bf16"), r["precision_layers"].get("ort-int8")
        if bf16:
            out.append(f"- {r['model']} torch-bf16: {100 * bf16['bf16_share']:.1f}% of the encoder's FLOPs in bf16 "
                       f"({', '.join(sorted(bf16['bf16_layers']))}); fp32: {'; '.join(bf16['fp32'])}")
        if int8:
            out.append(f"- {r['model']} ort-int8: int8 GEMMs {sum(int8['int8_gemms'].values())} "
                       f"({', '.join(int8['int8_gemms'])}); fp32 GEMMs {dict(int8['fp32_gemms'])}; fp32 ops "
                       f"{dict(int8['fp32_ops'])}")
    return out


def bf16_keep_table(rows: list[Row]) -> list[str]:
    """Per run and model: the bf16 encoder with every GEMM in bf16 against the route (its fp32 layers kept)."""
    cases = {(r["run"], r["model"], r["case"]): r for r in rows if r.get("kind") == "bf16_keep"}
    out = ["| run | model | bf16-all ms | bf16-kept ms | kept / all time | bf16 FLOP share all -> kept "
           "| probe GFLOP/s |", "|---|---|---|---|---|---|---|"]
    for run, model in sorted({(run, model) for run, model, _ in cases}):
        every, kept = cases.get((run, model, "bf16-all")), cases.get((run, model, "bf16-kept"))
        if every and kept:
            out.append(f"| {run} | {model} | {1e3 * every['median']:.4g} | {1e3 * kept['median']:.4g} | "
                       f"{kept['median'] / every['median']:.3f} | {100 * every['bf16_share']:.1f}% -> "
                       f"{100 * kept['bf16_share']:.1f}% | {min(every['probe_gflops'], kept['probe_gflops'])}-"
                       f"{max(every['probe_gflops_max'], kept['probe_gflops_max'])} |")
    return out if len(out) > 2 else []


def chunk_table(rows: list[Row]) -> list[str]:
    """Patches/s and peak RSS per chunk size, per route (the declared chunk is the smallest near the best)."""
    chunks = sorted((r for r in rows if r.get("kind") == "chunk"), key=lambda r: (r["contender"], r["chunk"]))
    out = ["| route | chunk | patches/s | image peak RSS MB |", "|---|---|---|---|"]
    out += [f"| {r['contender']} | {r['chunk']} | {r['patches'] / r['median']:.3g} | {r['peak_mb']:.0f} |"
            for r in chunks]
    return out if chunks else []


def route_targets(routes: list[Row], parity: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Per model: the best parity-passing route's worst ratio over the image sizes (target >= 2x the original,
    one patch per call) and its process peak against 1.25x the original's at the same sizes."""
    out = []
    for run, model in sorted({(r["run"], r["model"]) for r in routes}):
        rs = [r for r in routes if (r["run"], r["model"]) == (run, model)]
        orig = {r["nominal_mp"]: r for r in rs if r["contender"] == "original-1"}
        scored: list[tuple[float, str, list[Row]]] = []
        for contender in sorted({r["contender"] for r in rs if not r["contender"].startswith("original")}):
            cr = [r for r in rs if r["contender"] == contender and r["nominal_mp"] in orig]
            gate = parity.get((model, contender))
            passes = all((r["dprob"] or 0) <= 1e-2 and not r["flip"] for r in cr) and not (gate and gate["failures"])
            if cr and passes and all(r["ratio"] for r in cr):
                scored.append((min(r["ratio"] for r in cr), contender, cr))
        if any(r["refused"] for r in rs):
            out.append(f"- {model} ({run}): ratios refused ({next(r['refused'] for r in rs if r['refused'])})")
            continue
        if not scored:
            out.append(f"- {model} ({run}): no parity-passing route with a ratio in this run")
            continue
        worst, contender, cr = max(scored)
        mem = max(r["process_peak_mb"] / orig[r["nominal_mp"]]["process_peak_mb"] for r in cr)
        ordered = sorted(cr, key=lambda r: r["nominal_mp"])
        sizes = ", ".join(f"{r['nominal_mp']:g} MP {r['ratio']:.2f}x" for r in ordered)
        gated = "comparator gates passed" if parity.get((model, contender)) else "no comparator record"
        out.append(f"- {model} ({run}): best parity-passing route **{contender}**: at least **{worst:.2f}x** the "
                   f"original's images/s ({sizes}; target >= 2x: {'met' if worst >= 2 else 'MISSED'}); process peak "
                   f"at most **{mem:.2f}x** the original's one-patch-per-call peak (target <= 1.25x: "
                   f"{'met' if mem <= 1.25 else 'MISSED'}); {gated}; first-guess route here: "
                   f"{cr[0].get('first_guess_route', cr[0].get('auto_route', '?'))}")
    return out


def plot_routes(routes: list[Row], out_dir: Path) -> Path | None:
    """Images/s per contender and image size, one panel per model (log y)."""
    models = sorted({r["model"] for r in routes})
    if not models:
        return None
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        rs = [r for r in routes if r["model"] == model]
        for contender in sorted({r["contender"] for r in rs}):
            pts = sorted((r["nominal_mp"], r["images_per_s"]) for r in rs if r["contender"] == contender)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=contender)
        ax.set(title=model, xlabel="megapixels", ylabel="images/s", xscale="log", yscale="log")
        ax.legend(fontsize=7)
    return _save(fig, out_dir / "routes.png")


def plot_throughput(enc: list[Row], out_dir: Path) -> Path | None:
    """Bar chart: patches/s per backend, one panel per (device, model), bars grouped by batch."""
    panels = sorted({(r["device"], r["model"]) for r in enc})
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (dev, model) in zip(axes[0], panels, strict=False):
        rs = [r for r in enc if (r["device"], r["model"]) == (dev, model)]
        batches, backs = sorted({r["batch"] for r in rs}), sorted({r["backend"] for r in rs})
        width = 0.8 / len(backs)
        for i, back in enumerate(backs):
            vals = {r["batch"]: r["patches_per_s"] for r in rs if r["backend"] == back}
            ax.bar([j + i * width for j in range(len(batches))], [vals.get(b, 0) for b in batches], width,
                   label=back)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))], [f"bs{b}" for b in batches])
        ax.set(title=f"{model} on {dev}", ylabel="patches/s", yscale="log")
        ax.legend(fontsize=7)
    return _save(fig, out_dir / "throughput.png")


def plot_resolution(res: dict[str, list[Row]], out_dir: Path) -> Path | None:
    """Seconds per image and seconds per megapixel versus megapixels (log x)."""
    if not res:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for model, rs in sorted(res.items()):
        mp = [r["megapixels"] for r in rs]
        a1.loglog(mp, [r["median"] for r in rs], "o-", label=model)
        a2.semilogx(mp, [r["median"] / r["megapixels"] for r in rs], "o-", label=model)
    a1.set(xlabel="megapixels", ylabel="seconds per image", title="score_images, CPU")
    a2.set(xlabel="megapixels", ylabel="seconds per megapixel", title="should be flat", ylim=(0, None))
    a1.legend(), a2.legend()
    return _save(fig, out_dir / "resolution.png")


def plot_concurrency(rows: list[Row], out_dir: Path) -> Path | None:
    """Latency versus concurrency for serving results (benchmarks with ``extra_info['concurrency']``)."""
    serving = [r for r in rows if "concurrency" in r]
    if not serving:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in sorted({r["group"] or "serving" for r in serving}):
        rs = sorted((r for r in serving if (r["group"] or "serving") == label), key=lambda r: r["concurrency"])
        ax.plot([r["concurrency"] for r in rs], [1e3 * r["median"] for r in rs], "o-", label=label)
    ax.set(xlabel="concurrency", ylabel="median latency (ms)", title="serving latency vs concurrency")
    ax.legend(fontsize=7)
    return _save(fig, out_dir / "latency_concurrency.png")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)

    plt.close(fig)
    return path


def write_report(json_paths: Path | list[Path], out_dir: Path) -> Path:
    """Write ``report.md`` and the plots for one or more pytest-benchmark JSONs (one per run: every ratio is
    taken within its run); returns the Markdown path."""
    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in (json_paths if isinstance(json_paths, list) else [json_paths])]
    loaded = [load_rows(p) for p in paths]
    rows = [r for _, rs in loaded for r in rs]
    enc_lines, enc = encoder_table(rows)
    res_lines, res = resolution_table(rows)
    routes, parity = route_rows(rows), parity_rows(rows)
    pk = [f"- {r['run']}: {r['device']} {r['backend']} n={r['n']}: {r['flops_per_step'] / r['median'] / 1e9:.1f} "
          f"GFLOP/s median, {r['flops_per_step'] / r['min'] / 1e9:.1f} best (the peak used for % of peak: best of "
          "these, per precision)" for r in rows if r.get("kind") == "peak"]
    health = [f"- {run}: {why or 'matmul probe steady (within 20% of its best): ratios reported'}"
              for run, why in run_health(rows).items()]
    plots = [p for p in (plot_routes(routes, out_dir), plot_throughput(enc, out_dir), plot_resolution(res, out_dir),
                         plot_concurrency(rows, out_dir)) if p]
    sources = ", ".join(f"`{p.name}`" for p in paths)
    sections = [["# SPAI benchmark report", f"Source: {sources}", *[ln for d, _ in loaded for ln in machine_lines(d)]],
                ["## Targets", *route_targets(routes, parity), *targets(enc, res, rows)],
                ["## Runs (a ratio is only taken within one run)", *health], ["## Measured matmul peak", *pk],
                ["## CPU routes versus the original algorithm (same weights, same images, same run)",
                 "Baselines:", *baseline_lines(routes), "", *(route_table(routes) if routes else ["(none)"])],
                ["## Chunk sizes (spai-b16, one 8-patch image)", *(chunk_table(rows) or ["(none)"])],
                ["## Parity of the routes (spai.infer.parity gates: fp32 1e-5; bf16/int8/fp16 1e-2, no flip)",
                 *(parity_table(rows) or ["(none)"]), *precision_lines(rows)],
                ["## bf16: every GEMM against the route's fp32 layers (same run)",
                 *(bf16_keep_table(rows) or ["(none)"])],
                ["## Patch encoder (ratio to the model's original algorithm, same weights, same run)", *enc_lines],
                ["## Foundation: encode_patches vs one bare CLIP pass (CPU, torch)", *foundation_table(rows)],
                ["## Cost versus resolution (score_images, CPU)", *res_lines],
                ["## Aggregator versus number of patches", *aggregator_table(rows)],
                ["## Other benchmarks", *(other_table(rows) or ["(none)"])],
                ["## Plots", *[f"![{p.stem}]({p.name})" for p in plots]]]
    md = out_dir / "report.md"
    md.write_text("\n\n".join("\n".join(s) for s in sections) + "\n")
    return md


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, nargs="+", help="pytest-benchmark JSON(s) (--benchmark-json), one per run")
    parser.add_argument("-o", "--out-dir", type=Path, default=None, help="output folder (default: the first JSON's)")
    args = parser.parse_args(argv)
    md = write_report(list(args.json), args.out_dir or args.json[0].parent)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
