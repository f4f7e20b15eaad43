"""Experiment ``hamipose``: claims on hand-made metrics, and the structure of a ``fast`` run."""

import json
import math

import pytest
import torch

from poselab.experiments import hamipose as exp


def _run(pck05, conflict=0.1, fluctuation=0.5, loss_std=1e-4, step_rms=1e-4):
    late = {"pck@0.05": pck05, "conflict_ratio": conflict, "fluctuation": fluctuation, "loss_std": loss_std,
            "step_rms": step_rms, "loss": 1.0}
    return {"config": {}, "late": late, "final": dict(late)}


def _metrics(pcks=None, conflict=(0.09, 0.06), fluct=(0.9, 0.7, 0.4), loss_std=(3e-4, 2e-4, 1e-4),
             no_friction=(3e-4, 0.5), sweep=(0.6, 0.65), paper_weight=(0.7, 0.72, 0.74, 0.76), controls=(0.6, 0.56)):
    pcks = pcks or {"source_only": 0.55, "mean_teacher": 0.75, "unified": 0.77, "keypoint": 0.785, "hamipose": 0.8}
    runs = {name: _run(p) for name, p in pcks.items()}
    for row, p in zip(exp.LADDER, paper_weight):
        runs[f"{row}@lambda=1"] = _run(p)
    runs["batchnorm_control"], runs["source_only_hamiltonian"] = (_run(p) for p in controls)
    runs["unified"]["late"]["conflict_ratio"], runs["keypoint"]["late"]["conflict_ratio"] = conflict
    runs["sgd"] = _run(0.7, fluctuation=fluct[0], loss_std=loss_std[0])
    for name, f, ls in (("keypoint", fluct[1], loss_std[1]), ("hamipose", fluct[2], loss_std[2])):
        runs[name]["late"]["fluctuation"], runs[name]["late"]["loss_std"] = f, ls
    runs["hamiltonian_no_friction"] = _run(no_friction[1], step_rms=no_friction[0])
    runs["oracle"] = _run(0.9)
    runs["gamma_max=8"] = _run(sweep[0])
    runs["gate_warmup=0.3"] = _run(sweep[1])
    return {"runs": runs}


CLAIM_IDS = {"ablation", "ablation@lambda=1", "adaptation", "batchnorm", "transport", "conflict", "fluctuation",
             "friction", "sensitivity"}


def test_late_mean_takes_the_last_third_and_keeps_nan():
    assert exp.late_mean([math.nan, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) == pytest.approx(5.5)
    assert exp.late_mean([math.nan, 2.0]) == 2.0
    assert math.isnan(exp.late_mean([1.0, 2.0, 3.0, math.nan, 4.0, math.nan]))  # a diverged run stays NaN


def test_claims_hold_on_a_paper_like_outcome():
    claims = {c.id: c for c in exp._claims(_metrics())}
    assert set(claims) == CLAIM_IDS
    assert all(c.holds for c in claims.values()), [(c.id, c.note) for c in claims.values() if not c.holds]
    assert "75.3 < 77.2 < 78.5 < 79.8" in claims["ablation"].paper
    assert "hamipose 80.0" in claims["ablation"].measured and "hamipose 76.0" in claims["ablation@lambda=1"].measured
    assert "+1.5 with the filtered gradients, +1.0 on source only" in claims["transport"].measured


def test_claims_fail_with_reasons():
    pcks = {"source_only": 0.6, "mean_teacher": 0.62, "unified": 0.61, "keypoint": 0.63, "hamipose": 0.58}
    claims = {c.id: c for c in exp._claims(_metrics(pcks, conflict=(0.05, 0.07), fluct=(0.5, 0.4, 0.3),
                                                    loss_std=(1e-4, 2e-4, 3e-4), no_friction=(0.5e-4, 0.7),
                                                    sweep=(0.7, 0.5), paper_weight=(0.5, 0.52, 0.51, 0.53),
                                                    controls=(0.59, 0.65)))}
    assert claims["ablation"].holds is False
    assert "mean_teacher -> unified" in claims["ablation"].note and "keypoint -> hamipose" in claims["ablation"].note
    assert "unified -> keypoint" not in claims["ablation"].note
    assert claims["ablation@lambda=1"].holds is False and claims["ablation@lambda=1"].note == \
        "not increasing at: unified -> keypoint"
    assert claims["adaptation"].holds is False
    assert claims["batchnorm"].holds is False  # 0.58 < 0.59
    assert claims["transport"].holds is False  # -5 points vs +5 points
    assert claims["conflict"].holds is False
    assert claims["fluctuation"].holds is False
    assert claims["friction"].holds is False
    assert claims["sensitivity"].holds is False
    assert all(c.note for c in claims.values())


def test_claims_with_a_diverged_run_are_undecided():
    metrics = _metrics()
    metrics["runs"]["hamipose"]["late"]["pck@0.05"] = math.nan
    metrics["runs"]["sgd"]["late"]["loss_std"] = math.nan
    claims = {c.id: c for c in exp._claims(metrics)}
    for cid in ("ablation", "adaptation", "batchnorm", "transport", "fluctuation", "sensitivity"):
        assert claims[cid].holds is None and "diverged" in claims[cid].note, cid
    assert claims["conflict"].holds is True and claims["friction"].holds is True  # they rest on other values
    assert claims["ablation@lambda=1"].holds is True


@pytest.mark.parametrize("profile", sorted(exp.CONFIGS))
def test_profiles(profile):
    cfg = exp.CONFIGS[profile]
    assert cfg["iterations"] % cfg["log_every"] == 0 and cfg["pretrain"] >= 1
    assert 2.0 not in cfg["gamma_max"] and 0.1 not in cfg["gate_warmup"]  # the defaults are the ablation row
    assert cfg["batch"] <= min(cfg["source"], cfg["target"])


@pytest.fixture(scope="module")
def fast_results(fast_run):
    return fast_run("hamipose").results


def test_fast_run_structure(fast_results):
    m = fast_results.metrics
    cfg = exp.CONFIGS["fast"]
    expected = {*exp.ABLATION, *exp.PAPER_WEIGHT_RUNS, *exp.CONTROLS, "oracle", *exp.OPTIMISER_RUNS}
    expected |= {f"gamma_max={g:g}" for g in cfg["gamma_max"]} | {f"gate_warmup={w:g}" for w in cfg["gate_warmup"]}
    assert set(m["runs"]) == expected
    steps = list(range(0, cfg["iterations"] + 1, cfg["log_every"]))
    for name, run in m["runs"].items():
        assert run["curves"]["iteration"] == steps, name
        assert all(0.0 <= p <= 1.0 for p in run["curves"]["pck@0.05"]), name
        assert math.isfinite(run["final"]["loss"]), name
        assert 0.0 <= run["late"]["fluctuation"] <= 2.0, name
        assert run["late"]["step_rms"] > 0 and not run["diverged"], name
    # Every run continues from the same source model: identical step-0 evaluations.
    assert len({round(run["curves"]["pck@0.05"][0], 9) for run in m["runs"].values()}) == 1
    assert m["runs"]["mean_teacher"]["curves"]["pck@0.05"][0] == pytest.approx(m["pretrained"]["pck@0.05"])
    # Source only and the oracle have no target term, hence no conflict measurement; the others do.
    assert math.isnan(m["runs"]["source_only"]["late"]["conflict_ratio"])
    assert 0.0 <= m["runs"]["keypoint"]["late"]["conflict_ratio"] <= 1.0
    ids = {c.id for c in fast_results.claims}
    assert ids == CLAIM_IDS
    # the study's lambda and the paper's, as configured
    assert m["runs"]["hamipose"]["config"]["target_weight"] == exp.WEIGHT
    assert m["runs"]["hamipose@lambda=1"]["config"]["target_weight"] == exp.PAPER_WEIGHT == 1.0
    assert math.isnan(m["runs"]["batchnorm_control"]["late"]["conflict_ratio"])
    assert isinstance(fast_results.artifacts["networks"]["hamipose"], torch.nn.Module)


def test_a_checkpointed_rerun_resumes_instead_of_retraining(fast_run, monkeypatch):
    import poselab.methods.hamipose as hp

    first = fast_run("hamipose")
    names = sorted(p.name for p in first.checkpoint_dir.iterdir())
    assert "hamipose-fast-pretrain-seed0.safetensors" in names and len(names) == len(first.results.metrics["runs"]) + 1

    def no_step(*args, **kwargs):
        raise AssertionError("the rerun must load the finished checkpoints, not train")

    monkeypatch.setattr(hp, "hamipose_step", no_step)
    second = exp.run("fast", device="cpu", seed=0, progress=False, checkpoint_dir=first.checkpoint_dir)
    same = lambda runs: json.dumps({n: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
                                    for n, r in runs.items()}, sort_keys=True)  # NaN == NaN as text
    assert same(second.metrics["runs"]) == same(first.results.metrics["runs"])
