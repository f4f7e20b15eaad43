"""The chapter-0 experiment: its helpers, its claims logic and its checkpointed rerun."""

import pytest
import torch

from poselab.experiments import data as exp


def _metrics(in_mm, cross_mm, low_mm, high_mm):
    dar = {"low_dar": {"mpjpe_mm": low_mm, "dar_range": [0.1, 0.3]},
           "high_dar": {"mpjpe_mm": high_mm, "dar_range": [0.5, 0.9]}}
    return {"train": {"mpjpe_mm": 10.0}, "test_in": {"mpjpe_mm": in_mm}, "test_cross": {"mpjpe_mm": cross_mm},
            "samples": {"train": 100}, "test_in_by_dar": dar, "test_cross_by_dar": dar}


@pytest.mark.parametrize("values, expected", [
    ((50.0, 100.0, 40.0, 60.0), {"simple_baseline_in_domain": True, "cross_domain_gap": True, "high_dar_is_harder": True}),
    ((90.0, 100.0, 70.0, 60.0), {"simple_baseline_in_domain": False, "cross_domain_gap": False, "high_dar_is_harder": False}),
    ((68.0, 81.7, 1.0, 1.0), {"simple_baseline_in_domain": True, "cross_domain_gap": True, "high_dar_is_harder": False}),
])
def test_claims_follow_the_measurements(values, expected):
    claims = exp._claims(_metrics(*values))
    assert {c.id: c.holds for c in claims} == expected
    assert all(bool(c.note) == (not c.holds) for c in claims), "a claim that fails must give a likely reason"


def test_checkpointed_rerun_resumes_instead_of_retraining(fast_run, monkeypatch):
    first, folder = fast_run("data").results, fast_run("data").checkpoint_dir
    assert (folder / "data-fast-seed0.pt").exists()

    def no_step(*args, **kwargs):
        raise AssertionError("the rerun must load the finished checkpoint, not train")

    monkeypatch.setattr(torch.optim.Adam, "step", no_step)
    second = exp.run("fast", device="cpu", seed=0, progress=False, checkpoint_dir=folder)
    assert second.metrics == first.metrics
    assert second.artifacts["history"].records == first.artifacts["history"].records
    assert {k for k in first.metrics} >= {"train", "test_in", "test_cross", "samples", "test_in_by_dar",
                                          "test_cross_by_dar"}
