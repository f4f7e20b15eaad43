"""Experiment ``meta_tto``: claims on hand-made metrics, and the structure of a ``fast`` run."""

import json
import math

import pytest
import torch

from poselab.experiments import meta_tto as exp


def _metrics(rows=None, method=(100.0, 87.0, 84.0, 80.0), eft=(100.0, 92.0, 88.0, 95.0), tto_steps=2,
             noisy_method=None, noisy_eft=None):
    rows = rows or {"regression": 100.0, "eft": 88.0, "meta": 84.0, "meta_aux": 80.0}
    ablation = {row: {"mpjpe_mm": v, "pa_mpjpe_mm": v / 2} for row, v in rows.items()}
    curves = {"meta_aux": {"mpjpe_mm": list(method)}, "regression": {"mpjpe_mm": list(eft)}}
    noisy = {"meta_aux": {"mpjpe_mm": list(noisy_method or method)}, "regression": {"mpjpe_mm": list(noisy_eft or eft)}}
    return {"ablation": {"in_domain": ablation, "cross_domain": ablation}, "curves": {"in_domain": curves},
            "noisy_curves": noisy, "tto_steps": tto_steps}


def test_claims_hold_on_a_paper_like_outcome():
    claims = {c.id: c for c in exp._claims(_metrics())}
    assert set(claims) == {"ablation/in_domain", "ablation/cross_domain", "steps", "steps/noisy_detector",
                           "convergence"}
    assert all(c.holds for c in claims.values()), [(c.id, c.note) for c in claims.values() if not c.holds]
    assert "meta_aux 80.0" in claims["ablation/in_domain"].measured
    assert "reaches it after 1 steps" in claims["convergence"].measured  # 87 <= EFT's 88 at step 2


def test_claims_fail_with_reasons():
    rows = {"regression": 100.0, "eft": 90.0, "meta": 92.0, "meta_aux": 85.0}
    claims = {c.id: c for c in exp._claims(_metrics(rows, method=(100.0, 95.0, 90.0, 93.0),
                                                    eft=(100.0, 90.0, 85.0, 80.0)))}
    assert claims["ablation/in_domain"].holds is False
    assert claims["ablation/in_domain"].note == "not decreasing at: eft -> meta"
    assert claims["steps"].holds is False and claims["convergence"].holds is False
    assert all(c.note for c in claims.values() if not c.holds)


def test_steps_claim_needs_a_rise_above_noise():
    # EFT's last value 0.5 mm above its best: flat, not degrading
    claims = {c.id: c for c in exp._claims(_metrics(eft=(100.0, 92.0, 88.0, 88.5)))}
    assert claims["steps"].holds is False and "does not degrade" in claims["steps"].note
    claims = {c.id: c for c in exp._claims(_metrics(method=(100.0, 87.0, 80.0, 80.5)))}
    assert claims["steps"].holds is True  # the method's 0.5 mm rise is within noise


def test_noisy_detector_steps_claim_reads_the_noisy_curves():
    # EFT flat with the default detector, degrading with the noisy one: only the noisy claim holds
    claims = {c.id: c for c in exp._claims(_metrics(eft=(100.0, 92.0, 88.0, 88.0),
                                                    noisy_eft=(110.0, 100.0, 98.0, 104.0),
                                                    noisy_method=(112.0, 99.0, 96.0, 95.0)))}
    assert claims["steps"].holds is False
    assert claims["steps/noisy_detector"].holds is True
    assert "EFT 110.0 / 98.0 / 104.0" in claims["steps/noisy_detector"].measured
    # the method rising too fails it with that reason
    claims = {c.id: c for c in exp._claims(_metrics(noisy_eft=(110.0, 100.0, 98.0, 104.0),
                                                    noisy_method=(112.0, 96.0, 99.0, 101.0)))}
    assert claims["steps/noisy_detector"].holds is False
    assert claims["steps/noisy_detector"].note == "the method's error rises again"


@pytest.mark.parametrize("profile", sorted(exp.CONFIGS))
def test_profiles(profile):
    cfg = exp.CONFIGS[profile]
    assert 0 < cfg["tto_steps"] < cfg["max_steps"] and cfg["batch"] <= cfg["train"]


@pytest.fixture(scope="module")
def fast_results(fast_run):
    return fast_run("meta_tto").results


def test_fast_run_structure(fast_results):
    m = fast_results.metrics
    cfg = exp.CONFIGS["fast"]
    assert set(m["runs"]) == set(exp.RUNS)
    for test_set in exp.TEST_SETS:
        assert set(m["ablation"][test_set]) == set(exp.ROWS)
        for name, curves in m["curves"][test_set].items():
            assert len(curves["mpjpe_mm"]) == cfg["max_steps"] + 1, name
            assert all(math.isfinite(v) and v > 0 for v in curves["mpjpe_mm"]), name
        # the ablation rows are points of the curves: regression at step 0, the others at tto_steps
        rows, curves = m["ablation"][test_set], m["curves"][test_set]
        assert rows["regression"]["mpjpe_mm"] == curves["regression"]["mpjpe_mm"][0]
        assert rows["eft"]["mpjpe_mm"] == curves["regression"]["mpjpe_mm"][cfg["tto_steps"]]
        assert rows["meta_aux"]["mpjpe_mm"] == curves["meta_aux"]["mpjpe_mm"][cfg["tto_steps"]]
        # PVE only at step 0 and the ablation's step; the rows read it from there
        for name in exp.RUNS:
            assert set(curves[name]["pve_mm"]) == {0, cfg["tto_steps"]}
        assert rows["regression"]["pve_mm"] == curves["regression"]["pve_mm"][0]
        assert rows["meta"]["pve_mm"] == curves["meta"]["pve_mm"][cfg["tto_steps"]]
        assert all(0 < row["pve_mm"] < 2000 for row in rows.values())
    assert set(m["noisy_curves"]) == set(exp.RUNS)
    for name, curves in m["noisy_curves"].items():
        assert len(curves["mpjpe_mm"]) == cfg["max_steps"] + 1, name
        # same crops and weights, other detections: step 0 (no TTO) equals the clean curve's
        assert curves["mpjpe_mm"][0] == m["curves"]["in_domain"][name]["mpjpe_mm"][0]
        assert curves["reprojection"][1:] != m["curves"]["in_domain"][name]["reprojection"][1:]
    assert {c.id for c in fast_results.claims} == {"ablation/in_domain", "ablation/cross_domain", "steps",
                                                  "steps/noisy_detector", "convergence"}
    assert fast_results.artifacts["networks"]["meta"] is not fast_results.artifacts["networks"]["regression"]


def test_a_checkpointed_rerun_resumes_instead_of_retraining(fast_run, monkeypatch):
    import poselab.methods.meta_tto.training as mt_training

    first = fast_run("meta_tto")
    names = sorted(p.name for p in first.checkpoint_dir.iterdir())
    assert names == sorted(f"meta_tto-fast-{n}-seed0.safetensors" for n in ["pretrain", *exp.RUNS])

    def no_step(*args, **kwargs):
        raise AssertionError("the rerun must load the finished checkpoints, not train")

    monkeypatch.setattr(mt_training, "_mesh_step", no_step)
    second = exp.run("fast", device="cpu", seed=0, progress=False, checkpoint_dir=first.checkpoint_dir)
    same = lambda m: json.dumps({"histories": {n: r["history"] for n, r in m["runs"].items()},  # noqa: E731
                                 "ablation": m["ablation"]}, sort_keys=True)  # NaN == NaN as text
    assert same(second.metrics) == same(first.results.metrics)
