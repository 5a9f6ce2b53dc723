"""The RSS growth judged by the load test: windows of the load phase, totals and per process, the goals."""

from __future__ import annotations

import load_test
import rss_series


def _samples(values_per_phase: dict[str, list[float]]) -> list[dict]:
    out, t = [], 0.0
    for phase, values in values_per_phase.items():
        for v in values:
            out.append({"t": t, "phase": phase, "procs": {"tritonserver": {"rss": v, "anon": v / 2, "shmem": 1.0},
                                                          "spai_0_0": {"rss": 100.0, "anon": 90.0, "shmem": 5.0,
                                                                       "pool": 128.0}}})
            t += 1.0
    return out


W = rss_series.WINDOW  # five-minute windows


def test_growth_is_judged_on_windows_of_the_load_phase():
    load = [200.0] * W + [220.0] * W + [260.0] * W  # three windows (+100 MiB of a steady stub): 300, 320, 360
    summary = rss_series.growth_summary(_samples({"warm-up": [50.0, 400.0], "load": load, "after": [10.0]}))
    t = summary["total"]
    assert (t["start"], t["after_warmup"], t["half"], t["end"]) == (150.0, 300.0, 320.0, 360.0)
    assert (t["growth"], t["growth_last_half"]) == (0.2, 0.125)
    p = summary["processes"]["tritonserver"]
    assert (p["after_warmup"], p["end"], p["anon_end"], p["growth"]) == (200.0, 260.0, 130.0, 0.3)
    assert summary["processes"]["spai_0_0"]["pool_end"] == 128.0
    fields = load_test.rss_fields(_samples({"load": load}))
    assert load_test.rss_failures(fields, 0.10, 0.02) == [
        "server RSS grew 20.0% after warm-up (limit 10%)",
        "server RSS grew 12.5% over the last half of the load (limit 2%)"]
    assert summary["total_pss"]["end"] == 0.0 and "pss_total_mb" not in fields  # no pss in these samples
    short = load_test.rss_fields(_samples({"load": [200.0] * (W + 100) + [203.0] * 150}))
    assert load_test.rss_failures(short, 0.10, 0.02) == []  # under two windows: too short to judge the last half


def _series(values: list[float]) -> list[dict]:
    return _samples({"load": [v - 100.0 for v in values]})  # _samples adds a steady 100 MiB stub


def test_a_swing_of_minutes_is_not_growth_but_a_slow_leak_is():
    """A flat level with a +-60 MiB swing of a 7-minute period (the stubs' heaps between trims) passes; the same
    swing on a leak of 20% over the load (9% over its last half) fails both goals and shows in the trend."""
    import math

    n = 2000
    swing = [60.0 * math.sin(2 * math.pi * i / 420) for i in range(n)]
    flat = load_test.rss_fields(_series([900.0 + d for d in swing]))
    assert load_test.rss_failures(flat, 0.10, 0.02) == [], flat
    assert abs(flat["rss_trend_last_half"]) < 0.02
    leak = load_test.rss_fields(_series([900.0 * (1 + 0.2 * i / n) + d for i, d in enumerate(swing)]))
    assert [f.split(" grew")[0] for f in load_test.rss_failures(leak, 0.10, 0.02)] == ["server RSS"] * 2
    assert leak["rss_trend_last_half"] > 0.05 and 0.15 < leak["rss_trend"] < 0.22


def test_rejudge_recomputes_verdicts_from_the_saved_series_and_keeps_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(load_test, "HERE", tmp_path)
    rss_series.save(_series([900.0] * 3 * W), tmp_path / "rss" / "flat.json")
    records = {"flat": {"rss_series": "rss/flat.json", "rss_growth": 0.5, "passed": False, "date": "2026-11-30",
                        "failures": ["server RSS grew 50.0% after warm-up (limit 10%)", "1 good requests failed"]},
               "no series": {"passed": True}}
    out = load_test.rejudged(records, 0.10, 0.02)
    assert [r["name"] for r in out] == ["flat"]
    assert (out[0]["rss_growth"], out[0]["failures"], out[0]["passed"]) == (0.0, ["1 good requests failed"], False)
    assert out[0]["date"] == "2026-11-30"


def test_series_round_trip_and_plot(tmp_path):
    samples = _samples({"warm-up": [100.0] * 5, "load": [120.0] * 40, "after": [90.0] * 3})
    path = rss_series.save(samples, tmp_path / "s.json", {"name": "x"})
    meta, back = rss_series.load(path)
    assert meta == {"name": "x"} and back == samples
    assert [r[0] for r in rss_series.phase_runs(samples)] == ["warm-up", "load", "after"]
    png = rss_series.plot(samples, tmp_path / "s.png", "x")
    assert png.stat().st_size > 5000


def test_the_sampler_sees_this_process():
    import os

    procs = rss_series.sample(os.getpid())
    assert procs["tritonserver"]["rss"] > 10 and "anon" in procs["tritonserver"]


def test_the_sum_of_pss_is_judged_alongside_when_sampled():
    samples = _samples({"load": [200.0] * W + [220.0] * W + [260.0] * W})
    for s in samples:
        s["procs"]["tritonserver"]["pss"] = s["procs"]["tritonserver"]["rss"] / 2
    fields = load_test.rss_fields(samples)
    assert fields["pss_total_mb"]["after_warmup"] == 100.0 and fields["pss_total_mb"]["end"] == 130.0
    assert fields["pss_growth"] == 0.3
