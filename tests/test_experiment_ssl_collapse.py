"""The chapter-5 experiment: helpers, the claims logic and a small run."""

import math

import pytest
import torch

from poselab.data.augment import EASY, HARD
from poselab.experiments import ssl_collapse as exp
from poselab.methods.ssl_collapse import SSL_METHODS


def test_response_drop():
    assert exp.response_drop([0.1, 0.4, 0.3]) == pytest.approx(0.25)
    assert exp.response_drop([0.1, 0.2, 0.3]) == 0.0
    assert exp.response_drop([0.0, 0.0]) == 0.0


def test_imbalance_counts_and_ratio():
    maps = torch.zeros(1, 1, 4, 5)
    maps[0, 0, 0, 0] = 0.9
    out = exp.imbalance(maps)
    assert out["counts"] == [19.0, 0.0, 0.0, 0.0, 1.0] and out["low_high_ratio"] == 19.0


def test_hard_variants_differ_from_easy_only_where_named():
    v = exp.HARD_VARIANTS
    assert v["same"] == EASY and v["all"] == HARD
    assert v["geometric"].rotation_deg == HARD.rotation_deg and v["geometric"].joint_cutout_k == 0
    assert v["randaugment"].rand_augment_num_ops == HARD.rand_augment_num_ops
    assert v["randaugment"].rotation_deg == EASY.rotation_deg
    assert v["joint_cutout"].joint_cutout_k == HARD.joint_cutout_k and v["joint_cutout"].rand_augment_num_ops == 0


def _run_metrics(response, pck, method="supervised", n=10, weight=1.0, hard="all", curve=None):
    curve = curve or [0.0, response]
    return {"method": method, "labelled": n, "weight": weight, "hard": hard,
            "curves": {"response": curve, "pck@0.1": [0.0, pck]}, "final": {"response": response, "pck@0.1": pck},
            "best_pck": pck}


def _metrics(consistency_response=0.01, consistency_pck=0.3, easy_hard_pck=0.6, dual_pck=0.7, cures_at=(10, 40)):
    runs = {}
    for n in (10, 40):
        runs[f"supervised@{n}"] = _run_metrics(0.4, 0.5, n=n)
        runs[f"consistency@{n}"] = _run_metrics(consistency_response, consistency_pck, "consistency", n,
                                                curve=[0.0, 0.3, consistency_response])
        if n in cures_at:
            runs[f"easy_hard@{n}"] = _run_metrics(0.35, easy_hard_pck, "easy_hard", n)
            runs[f"dual@{n}"] = _run_metrics(0.38, dual_pck, "dual", n)
    runs["consistency@10-w0.1"] = _run_metrics(0.2, 0.45, "consistency", 10, weight=0.1)
    runs["pair-same@10"] = _run_metrics(0.3, 0.52, "easy_hard", 10, hard="same")
    runs["pair-joint_cutout@10"] = _run_metrics(0.3, 0.55, "easy_hard", 10, hard="joint_cutout")
    histogram = {"ground_truth_counts": [1000.0, 40.0, 20.0, 10.0, 10.0], "supervised": [1.0, 0.9, 0.5, 0.4, 0.2],
                 "consistency": [1.0, 1.1, 0.1, 0.0, 0.0], "easy_hard": [1.0, 0.9, 0.4, 0.3, 0.1],
                 "dual": [1.0, 0.9, 0.4, 0.3, 0.2]}
    return {"labelled_sizes": [10, 40], "runs": runs, "iterations": 100, "stride": 2, "size": 64, "sigma": 1.5,
            "imbalance": {"low_high_ratio": 1200.0}, "predicted_histogram": histogram}


def test_high_value_share():
    histogram = {"ground_truth_counts": [100.0, 0.0, 0.0, 30.0, 10.0], "m": [1.0, 0.0, 0.0, 0.5, 0.5]}
    assert exp.high_value_share(histogram, "m") == pytest.approx((15 + 5) / 40)
    assert exp.high_value_share(histogram, "m", top_bins=1) == pytest.approx(0.5)


def test_claims_hold_on_a_paper_like_outcome():
    claims = {c.id: c for c in exp._claims(_metrics())}
    assert set(claims) == {"imbalance", "collapse", "downward", "high_values", "weight", "labels", "easy_hard", "dual",
                           "pairs"}
    assert all(c.holds for c in claims.values()), [(c.id, c.note) for c in claims.values() if not c.holds]
    assert all(c.note == "" for c in claims.values())


def test_claims_with_easy_hard_and_dual_only_at_the_smallest_size():
    # The book profile runs all four methods at the smallest labelled set only.
    claims = {c.id: c for c in exp._claims(_metrics(cures_at=(10,), easy_hard_pck=0.45))}
    assert claims["labels"].holds is True
    assert claims["easy_hard"].holds is False and "10 labels" in claims["easy_hard"].measured
    assert "40 labels" not in claims["easy_hard"].measured
    assert "best at 1 of 1" in claims["dual"].measured


def test_claims_fail_with_reasons_when_nothing_collapses():
    claims = {c.id: c for c in exp._claims(_metrics(consistency_response=0.39, consistency_pck=0.55, easy_hard_pck=0.4,
                                                    dual_pck=0.45))}
    assert claims["collapse"].holds is False and "not below supervised" in claims["collapse"].note
    assert "best PCK@0.1 0.550" in claims["collapse"].note
    assert claims["labels"].holds is False
    assert claims["easy_hard"].holds is False and "not above supervised" in claims["easy_hard"].note
    assert claims["dual"].holds is False
    assert "0.390" in claims["collapse"].measured


@pytest.fixture(scope="module")
def fast_results(fast_run):
    return fast_run("ssl_collapse").results


def test_fast_run_structure(fast_results):
    r = fast_results
    m = r.metrics
    cfg = exp.CONFIGS["fast"]
    smallest = min(cfg["labelled"])
    expected = {f"{meth}@{n}" for n in cfg["labelled"] for meth in (SSL_METHODS if n == smallest else
                                                                       cfg["larger_methods"])}
    expected |= {f"consistency@{min(cfg['labelled'])}-w{w:g}" for w in cfg["weights"]}
    expected |= {f"pair-{v}@{min(cfg['labelled'])}" for v in cfg["pairs"]}
    assert set(m["runs"]) == expected
    steps = list(range(0, cfg["iterations"] + 1, cfg["log_every"]))
    for name, run in m["runs"].items():
        assert run["curves"]["iteration"] == steps, name
        assert all(0.0 <= p <= 1.0 for p in run["curves"]["pck@0.1"]), name
        assert run["final"]["pck@0.1"] == run["curves"]["pck@0.1"][-1]
    # Every run starts from the same network: identical step-0 evaluations.
    starts = {round(run["curves"]["pck@0.1"][0], 9) for run in m["runs"].values()}
    assert len(starts) == 1
    assert m["imbalance"]["low_high_ratio"] > 10
    assert set(m["predicted_histogram"]) == {"ground_truth_counts", *SSL_METHODS}
    assert {c.id for c in r.claims} >= {"imbalance", "collapse", "easy_hard", "dual", "pairs"}
    assert all(c.holds in (True, False, None) for c in r.claims)
    assert len(r.artifacts["networks"][f"dual@{smallest}"]) == 2
    assert math.isfinite(r.to_dict()["seconds"])


@pytest.mark.parametrize("profile", sorted(exp.CONFIGS))
def test_profiles_run_what_the_claims_compare(profile):
    cfg = exp.CONFIGS[profile]
    # The "labels" claim compares consistency with supervised at every size.
    assert {"supervised", "consistency"} <= set(cfg["larger_methods"]) <= set(SSL_METHODS)
    assert max(cfg["labelled"]) < cfg["pool"] and cfg["probe"] <= cfg["pool"] - max(cfg["labelled"])
    assert cfg["iterations"] % cfg["log_every"] == 0
