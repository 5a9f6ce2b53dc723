"""RSS of every process of a running tritonserver over time: the server itself and each Python backend stub
(one per model instance), sampled separately once a second, with what each RSS is made of.

Per process and sample: ``rss`` (MiB), its ``anon`` part (heap: glibc arenas, ONNX Runtime's arena, numpy), its
``shmem`` part (touched pages of the Python backend's shared-memory pools, which tritonserver and the stub both map:
a sum of RSS counts them twice, and once more per extra mapping a pool's growth adds) and ``pss`` (shared pages
divided among the processes that map them: the sum of PSS counts each page once); per stub also ``pool``, the size
of its shared-memory region in /dev/shm (it only ever grows, by ``shm-growth-byte-size``). Labels:
``tritonserver`` and the stub's instance name (``spai_0_1``, ``spai_patch_encoder_0_0``, ...).

Growth is judged on windows of the load phase (medians of ``WINDOW`` samples, five minutes): after warm-up (the
first window of the load), half-way (the window centred on the middle) and the end (the last window), for the
total (sum over processes) and each process. Why five: RSS moves with the requests in flight (the encoder's by
160-370 MiB from one second to the next) and the `spai` stubs' heaps swing over minutes between trims; in a
20,000-request soak whose sum of RSS was flat over its last half (two-minute medians 838-927 MiB, no trend),
one-minute medians judged that swing as +8.6%; over that last half, two windows ten minutes apart differ by
3.7% (standard deviation) with one-minute windows and by 1.0% with five-minute ones. The least-squares trend of
the total (``trend``, ``trend_last_half``: the fitted line's end / start - 1) is reported beside them as a
cross-check that windows cannot hide a slow leak.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

MiB = 2**20
WINDOW = 300  # samples per window (1 s apart): five minutes
STUB_NAME_ARG = 8  # triton_python_backend_stub MODEL_PATH SHM_REGION DEFAULT GROWTH PARENT_PID LIB IPC NAME ...
STUB_REGION_ARG = 2


def process_memory(pid: int) -> dict[str, float] | None:
    """{rss, anon, shmem, pss} in MiB from /proc/PID/status and smaps_rollup (None once the process is gone)."""
    out: dict[str, float] = {}
    for name, fields in ((f"/proc/{pid}/status", {"VmRSS": "rss", "RssAnon": "anon", "RssShmem": "shmem"}),
                         (f"/proc/{pid}/smaps_rollup", {"Pss": "pss"})):
        try:
            with open(name) as f:
                for line in f:
                    key = line.split(":", 1)[0]
                    if key in fields:
                        out[fields[key]] = round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
    return out if "rss" in out else None


def server_processes(pid: int) -> dict[str, tuple[int, str | None]]:
    """label -> (pid, shm region path or None) for the server ``pid`` and its stubs."""
    import psutil

    try:
        root = psutil.Process(pid)
        children = root.children(recursive=True)
    except psutil.Error:
        return {}
    procs: dict[str, tuple[int, str | None]] = {"tritonserver": (pid, None)}
    for child in children:
        try:
            argv = child.cmdline()
        except psutil.Error:
            continue
        if len(argv) > STUB_NAME_ARG and argv[0].endswith("triton_python_backend_stub"):
            procs[argv[STUB_NAME_ARG]] = (child.pid, f"/dev/shm/{argv[STUB_REGION_ARG]}")
        else:
            procs[f"{Path(argv[0]).name if argv else 'process'}:{child.pid}"] = (child.pid, None)
    return procs


def sample(pid: int) -> dict[str, dict[str, float]]:
    """One sample: label -> {rss, anon, shmem[, pool]} (MiB) for every process of the server."""
    out: dict[str, dict[str, float]] = {}
    for label, (p, region) in server_processes(pid).items():
        mem = process_memory(p)
        if mem is None:
            continue
        if region:
            try:
                mem["pool"] = round(Path(region).stat().st_size / MiB, 1)
            except OSError:
                pass
        out[label] = mem
    return out


class RssSampler:
    """Samples :func:`sample` every ``interval`` seconds in a thread; :meth:`mark` names the phase that follows
    (``warm-up``, ``load``, ``after``)."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[dict] = []
        self.phase = "warm-up"
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def mark(self, phase: str) -> None:
        self.phase = phase
        self._take()

    def stop(self) -> list[dict]:
        self._stop.set()
        self._thread.join(5)
        return self.samples

    def _take(self) -> None:
        procs = sample(self.pid)
        if procs:
            self.samples.append({"t": round(time.monotonic() - self._t0, 2), "phase": self.phase, "procs": procs})

    def _run(self) -> None:
        while not self._stop.is_set():
            self._take()
            self._stop.wait(self.interval)


def total(s: dict, key: str = "rss") -> float:
    return sum(p.get(key, 0.0) for p in s["procs"].values())


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return round((v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2), 1) if n else 0.0


def phase_samples(samples: list[dict], phase: str = "load") -> list[dict]:
    return [s for s in samples if s["phase"] == phase]


def windows(samples: list[dict], phase: str = "load", width: int | None = None) -> dict[str, list[dict]]:
    """The samples of ``phase`` at the start (after warm-up), centred on the middle, and at the end (``width``
    samples each; default :data:`WINDOW`)."""
    load = phase_samples(samples, phase)
    if not load:
        return {}
    width = max(1, min(width or WINDOW, len(load) // 3 or 1))
    mid = len(load) // 2
    return {"after_warmup": load[:width], "half": load[max(0, mid - width // 2):][:width], "end": load[-width:]}


def last_half_judged(load_seconds: float | None) -> bool:
    """Whether a load lasted long enough (two windows) for its last half to be judged."""
    return (load_seconds or 0) >= 2 * WINDOW


def trend_growth(samples: list[dict], key: str = "rss") -> float | None:
    """Growth of the least-squares line through the total over time: its value at the last sample / at the first
    - 1 (None for fewer than two samples or a flat clock)."""
    if len(samples) < 2:
        return None
    t, y = [s["t"] for s in samples], [total(s, key) for s in samples]
    t_mean, y_mean = sum(t) / len(t), sum(y) / len(y)
    var = sum((a - t_mean) ** 2 for a in t)
    if not var:
        return None
    slope = sum((a - t_mean) * (b - y_mean) for a, b in zip(t, y)) / var
    first = y_mean + slope * (t[0] - t_mean)
    return round((y_mean + slope * (t[-1] - t_mean)) / first - 1, 4) if first > 0 else None


def growth_summary(samples: list[dict]) -> dict:
    """Start / after warm-up / half-way / end RSS (MiB) of the total and of each process, and the growth over the
    whole load (end / after warm-up - 1) and over its last half (end / half-way - 1)."""
    win = windows(samples)
    if not win:
        return {}
    labels = sorted({k for s in samples for k in s["procs"]})

    def points(value) -> dict[str, float]:
        return {"start": value(samples[:1]), **{name: value(w) for name, w in win.items()}}

    def growth(p: dict[str, float]) -> dict[str, float | None]:
        def ratio(a: float, b: float) -> float | None:
            return round(b / a - 1, 4) if a else None
        return {"growth": ratio(p["after_warmup"], p["end"]), "growth_last_half": ratio(p["half"], p["end"])}

    out: dict = {"total": points(lambda w: _median([total(s) for s in w]))}
    out["total"].update(growth(out["total"]))
    load = phase_samples(samples)
    out["total"].update({"trend": trend_growth(load), "trend_last_half": trend_growth(load[len(load) // 2:])})
    out["total_pss"] = points(lambda w: _median([total(s, "pss") for s in w]))
    out["total_pss"].update(growth(out["total_pss"]))
    out["processes"] = {}
    for label in labels:
        p = points(lambda w, lb=label: _median([s["procs"][lb]["rss"] for s in w if lb in s["procs"]]))
        p.update(growth(p))
        for key in ("anon", "shmem", "pool"):
            p[f"{key}_end"] = _median([s["procs"][label].get(key, 0.0) for s in win["end"] if label in s["procs"]])
        out["processes"][label] = p
    out["samples"] = len(samples)
    out["load_seconds"] = round(win["end"][-1]["t"] - win["after_warmup"][0]["t"], 1)
    return out


def save(samples: list[dict], path: str | Path, meta: dict | None = None) -> Path:
    """Write the series (compact JSON: one sample a line) with ``meta`` (run name, options)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(s, separators=(",", ":"), sort_keys=True) for s in samples]
    path.write_text('{"meta": ' + json.dumps(meta or {}, sort_keys=True) + ',\n "samples": [\n'
                    + ",\n".join(lines) + "\n]}\n")
    return path


def load(path: str | Path) -> tuple[dict, list[dict]]:
    data = json.loads(Path(path).read_text())
    return data.get("meta", {}), data["samples"]


def plot(samples: list[dict], path: str | Path, title: str) -> Path:
    """RSS per process over time (one line each, total on top, shaded phases) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({k for s in samples for k in s["procs"]})
    t = [s["t"] / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True, height_ratios=[1, 2])
    top.plot(t, [total(s) for s in samples], color="black", lw=1.2, label="sum of RSS")
    top.plot(t, [total(s, "anon") for s in samples], color="tab:red", lw=1, label="sum of anonymous RSS")
    _plot_windows(top, samples)
    top.set_ylabel("MiB")
    top.legend(loc="lower right", fontsize=8)
    for label in labels:
        bottom.plot(t, [s["procs"].get(label, {}).get("rss", float("nan")) for s in samples], lw=1, label=label)
    bottom.set_ylabel("RSS per process (MiB)")
    bottom.set_xlabel("minutes")
    bottom.legend(loc="upper left", fontsize=7, ncol=2)
    for ax in (top, bottom):
        _shade_phases(ax, samples)
        ax.grid(alpha=0.3)
    top.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_windows(ax, samples: list[dict]) -> None:
    """The judged points: each window's span at the height of its median sum of RSS."""
    for i, w in enumerate(windows(samples).values()):
        ax.plot([w[0]["t"] / 60, w[-1]["t"] / 60], [_median([total(s) for s in w])] * 2, color="tab:blue", lw=3,
                solid_capstyle="butt", label="judged windows (median)" if i == 0 else None)


def phase_runs(samples: list[dict]) -> list[tuple[str, float, float]]:
    """(phase, first t, last t) of each run of consecutive samples in one phase."""
    runs: list[list] = []
    for s in samples:
        if runs and runs[-1][0] == s["phase"]:
            runs[-1][2] = s["t"]
        else:
            runs.append([s["phase"], s["t"], s["t"]])
    return [tuple(r) for r in runs]


def _shade_phases(ax, samples: list[dict]) -> None:
    colors = {"warm-up": "tab:orange", "after": "tab:gray"}
    for phase, t0, t1 in phase_runs(samples):
        if phase in colors:
            ax.axvspan(t0 / 60, t1 / 60, color=colors[phase], alpha=0.12, label=None)
