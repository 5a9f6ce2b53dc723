"""spai.infer.job: a job is resolved once; opening a resolved job neither chooses nor gates its route again."""

from __future__ import annotations

from spai.infer import job as jobs
from spai.infer.routes import RouteChoice


def test_a_resolved_job_is_opened_without_resolving_it_again(tiny_model, monkeypatch):
    chosen: list[str] = []

    def choose(model, **options):
        chosen.append(options.get("backend"))
        return RouteChoice("torch", "fp32", "route: torch-fp32 (chosen)")

    monkeypatch.setattr(jobs, "choose_route", choose)
    asked = jobs.ScoringJob("spai-tiny", precision="auto", backend="torch")
    assert not asked.by_name and not asked.resolved
    resolved = jobs.resolve(asked, tiny_model)
    assert (resolved.route, resolved.resolved, chosen) == ("torch-fp32", True, ["torch"])
    with jobs.open_scorer(resolved, tiny_model) as scorer:
        assert scorer.calibration is tiny_model.calibration
    assert chosen == ["torch"]  # opened as resolved: the route was not chosen (nor gated) a second time
    named = jobs.resolve(jobs.ScoringJob("spai-tiny", precision="fp32"), None)  # by name: no model needed
    assert named.by_name and named.resolved and named.route == "torch-fp32"
