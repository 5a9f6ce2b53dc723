"""Turn pytest-benchmark JSON into a Markdown report with ratios to the baseline, and PNG plots.

Usage: ``python benchmarks/report.py results.json [-o DIR]`` -> ``DIR/report.md`` and ``DIR/*.png``
(DIR defaults to the JSON's folder). Throughputs are recomputed from each case's median.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

Row = dict[str, Any]
GPU_DTYPE = {"baseline": "fp32", "torch-fp32": "fp32"}


def load_rows(path: Path) -> tuple[dict[str, Any], list[Row]]:
    """The JSON document and one flat row per benchmark (extra_info + name, group, median, mean, stddev)."""
    doc = json.loads(Path(path).read_text())
    rows = []
    for b in doc.get("benchmarks", []):
        st = b["stats"]
        rows.append({**b.get("extra_info", {}), "name": b["name"], "group": b.get("group") or "",
                     "median": st["median"], "min": st["min"], "mean": st["mean"], "stddev": st["stddev"],
                     "rounds": st["rounds"]})
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
    """(device, dtype) -> the best GEMM FLOP/s measured (torch and ONNX Runtime GEMMs; best round)."""
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
    base = {(r["device"], r["model"], r["batch"]): r for r in enc if r["backend"] == "baseline"}
    pk = peaks(rows)
    out = ["| device | model | batch | backend | patches/s | x baseline | x baseline (min) | GFLOP/s | % of peak | "
           "RSS peak MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(enc, key=lambda r: (r["device"], r["model"], r["batch"], r["backend"])):
        pps = r["batch"] / r["median"]
        r["patches_per_s"], key = pps, (r["device"], r["model"], r["batch"])
        r["ratio"] = base[key]["median"] / r["median"] if key in base else None
        ratio_min = base[key]["min"] / r["min"] if key in base else None  # robust to a busy machine
        flops = (r["baseline_flops_per_patch"] if r["backend"] == "baseline" else r["flops_per_patch"]) * pps
        dtype = "fp32" if r["device"].startswith("cpu") else GPU_DTYPE.get(r["backend"], r["backend"].split("-")[-1])
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
    known = {"encoder", "foundation", "resolution", "aggregator", "peak", "rss64"}
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


def plot_throughput(enc: list[Row], out_dir: Path) -> Path | None:
    """Bar chart: patches/s per backend, one panel per (device, model), bars grouped by batch."""
    import matplotlib.pyplot as plt

    panels = sorted({(r["device"], r["model"]) for r in enc})
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (dev, model) in zip(axes[0], panels):
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
    import matplotlib.pyplot as plt

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
    import matplotlib.pyplot as plt

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
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_report(json_path: Path, out_dir: Path) -> Path:
    """Write ``report.md`` and the plots for one pytest-benchmark JSON; returns the Markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    doc, rows = load_rows(json_path)
    enc_lines, enc = encoder_table(rows)
    res_lines, res = resolution_table(rows)
    pk = [f"- {r['device']} {r['backend']} n={r['n']}: {r['flops_per_step'] / r['median'] / 1e9:.1f} GFLOP/s median, "
          f"{r['flops_per_step'] / r['min'] / 1e9:.1f} best (the peak used for % of peak: best of these)"
          for r in rows if r.get("kind") == "peak"]
    plots = [p for p in (plot_throughput(enc, out_dir), plot_resolution(res, out_dir),
                         plot_concurrency(rows, out_dir)) if p]
    sections = [["# SPAI benchmark report", f"Source: `{Path(json_path).name}`", *machine_lines(doc)],
                ["## Targets", *targets(enc, res, rows)], ["## Measured matmul peak", *pk],
                ["## Patch encoder (ratio to the upstream-style baseline, same weights, same run)", *enc_lines],
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
    parser.add_argument("json", type=Path, help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("-o", "--out-dir", type=Path, default=None, help="output folder (default: the JSON's)")
    args = parser.parse_args(argv)
    md = write_report(args.json, args.out_dir or args.json.parent)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
