"""The chapter-2 experiment: variants, helpers, the claims logic and a small run."""

import pytest
import torch

from poselab.data.lifting import build_lifting_splits
from poselab.experiments import flat_ensembles as exp
from poselab.methods.flat_ensemble import FlatEnsemble
from poselab.models.lifting import Lifter


def test_variant_names():
    assert exp.variant_names((1, 2, 4, 8)) == ["baseline", "asm", "asm_m2", "asm_m4", "asm_m8"]
    assert exp.variant_names((2,)) == ["baseline", "asm_m2"]


@pytest.mark.parametrize("backbone", ["mlp", "gcn"])
def test_variants_of_a_backbone_share_the_encoder_initialisation(backbone):
    sizes = exp.SMALL_SIZES[backbone]
    base = exp.build_variant(backbone, 0, sizes, 8, seed=3)
    ens = exp.build_variant(backbone, 4, sizes, 8, seed=3)
    assert isinstance(base, Lifter) and isinstance(ens, FlatEnsemble) and ens.num_heads == 4
    for (k, a), (_, b) in zip(base.encoder.state_dict().items(), ens.encoder.state_dict().items()):
        assert torch.equal(a, b), k


def test_difficult_joints_are_wrists_and_ankles():
    assert exp.difficult_joint_indices() == [13, 16, 6, 3]


def test_line_rise():
    assert exp.line_rise([5.0, 2.0, 1.0, 2.0, 7.0]) == pytest.approx(5.0)


def test_noise_curve_is_deterministic_and_starts_clean():
    data = build_lifting_splits("fast")["test_in"].subset(torch.arange(64))
    model = exp.build_variant("mlp", 2, exp.SMALL_SIZES["mlp"], 8, seed=0)
    curve = exp.noise_curve(model, data, [0.0, 10.0], seed=0, device="cpu")
    assert curve == exp.noise_curve(model, data, [0.0, 10.0], seed=0, device="cpu")
    with torch.no_grad():
        clean = 1000 * float((model.eval()(data.inputs) - data.targets).norm(dim=-1).mean())
    assert curve[0] == pytest.approx(clean, rel=1e-5)
    assert curve[1] != curve[0]


def _entry(good: bool):
    """Metrics of one backbone where the ensemble wins everything (good) or loses everything."""
    base, ens = (100.0, 80.0) if good else (80.0, 100.0)
    split = lambda v: {"test_in": {"mpjpe_mm": v, "p_mpjpe_mm": v}, "test_cross": {"mpjpe_mm": v, "p_mpjpe_mm": v}}
    return {"baseline": {**split(base), "parameters": 100, "train_seconds": 10.0},
            "asm": {**split(base), "parameters": 110, "train_seconds": 11.0},
            "asm_m2": {**split(ens), "parameters": 130, "train_seconds": 12.0 if good else 30.0},
            "step_ms": {"baseline": 10.0, "asm_m2": 12.0 if good else 30.0},
            "lambda_max": {"baseline": 2.0, "asm": 1.0 if good else 3.0},
            "line_mm": {"baseline": [9.0, 1.0, 9.0], "asm": [3.0, 1.0, 3.0] if good else [19.0, 1.0, 19.0]},
            "noise_mm": {"baseline": [base, base + 20], "asm": [base, base + 20],
                         "asm_m2": [ens, ens + (5 if good else 30)]},
            "lambda_converged": {"baseline": True, "asm": good}, "asm_denominator": 1.5,
            "head_deviation_mm": [0.0] + [(5.0 if good else 0.1) if j in (3, 6, 13, 16) else 1.0
                                          for j in range(1, 17)]}


@pytest.mark.parametrize("good", [True, False])
def test_claims_follow_the_measurements(good):
    m = {"variants": ["baseline", "asm", "asm_m2"], "heads": [1, 2], "noise_px": [0.0, 10.0],
         "mlp": _entry(good), "cnn": _entry(good),
         "dar_lambda_max": {"low_dar": 1.0, "high_dar": 2.0 if good else 0.5}}
    claims = exp._claims(m, ["mlp", "cnn"])
    assert {c.id for c in claims} == {"asm_lowers_lambda_max", "asm_flattens_landscape", "cross_domain_gains",
                                      "in_domain_gains", "ensemble_beats_single_asm", "noise_robustness",
                                      "heads_disagree_on_difficult_joints", "high_dar_steeper",
                                      "ensemble_costs_about_one_network"}
    assert all(c.holds is good for c in claims), [(c.id, c.holds) for c in claims]
    assert all(bool(c.note) == (not c.holds) for c in claims)


def test_notes_are_computed_from_the_measurements():
    m = {"variants": ["baseline", "asm", "asm_m2"], "heads": [1, 2], "noise_px": [0.0, 10.0],
         "mlp": _entry(False), "cnn": _entry(True), "dar_lambda_max": {"low_dar": 1.0, "high_dar": 0.5},
         "image_extent": {"low_dar": 0.7, "high_dar": 0.6}}
    claims = {c.id: c for c in exp._claims(m, ["mlp", "cnn"])}
    assert "mlp: ASM's mean denominator is 1.50" in claims["asm_lowers_lambda_max"].note
    assert "not converged: mlp asm" in claims["asm_lowers_lambda_max"].measured
    assert "worse for mlp by +20.0 mm" in claims["cross_domain_gains"].note
    assert claims["noise_robustness"].note.startswith("for mlp ")
    assert "input scale" in claims["high_dar_steeper"].note
    m["mlp"]["lambda_max"]["asm"] = -1.0  # not a minimum: the comparison cannot decide
    assert {c.id: c for c in exp._claims(m, ["mlp", "cnn"])}["asm_lowers_lambda_max"].holds is None


def test_check_config_rejects_what_the_experiment_cannot_use():
    good = exp.CONFIGS["fast"]
    exp.check_config(good)
    with pytest.raises(ValueError, match="heads: expected increasing head counts starting with 1"):
        exp.check_config(dict(good, heads=(2, 4)))
    with pytest.raises(ValueError, match="heads"):
        exp.check_config(dict(good, heads=(1, 4, 2)))
    with pytest.raises(ValueError, match="line_points: expected an odd number"):
        exp.check_config(dict(good, line_points=10))


def test_mean_denominator_is_one_without_scaling_and_above_with_it():
    x = build_lifting_splits("fast")["train"].inputs[:32]
    plain = FlatEnsemble(exp.build_variant("mlp", 0, exp.SMALL_SIZES["mlp"], 8, seed=0), 2, scaling=False)
    assert exp.mean_denominator(plain, x, batch_size=5) == pytest.approx(1.0)
    scaled = exp.build_variant("mlp", 2, exp.SMALL_SIZES["mlp"], 8, seed=0)
    with torch.no_grad():
        scaled.scale_weight2.zero_()
        scaled.scale_bias2.fill_(0.25)  # h = 0.25 everywhere: denominator 1.25
    assert exp.mean_denominator(scaled, x, batch_size=5) == pytest.approx(1.25)


def test_one_failing_backbone_fails_a_for_every_backbone_claim():
    m = {"variants": ["baseline", "asm", "asm_m2"], "heads": [1, 2], "noise_px": [0.0, 10.0],
         "mlp": _entry(True), "cnn": _entry(False), "dar_lambda_max": {"low_dar": 1.0, "high_dar": 2.0}}
    claims = {c.id: c for c in exp._claims(m, ["mlp", "cnn"])}
    assert claims["cross_domain_gains"].holds is False
    assert "1/2 backbones" in claims["cross_domain_gains"].measured


def test_fast_run_covers_every_measurement(fast_run):
    res, cfg = fast_run("flat_ensembles").results, exp.CONFIGS["fast"]
    m = res.metrics
    for b in cfg["backbones"]:
        assert set(m[b]) >= {"baseline", "asm", "asm_m2", "lambda_max", "line_mm", "noise_mm", "head_deviation_mm"}
        assert m[b]["asm_m2"]["parameters"] > m[b]["asm"]["parameters"] > m[b]["baseline"]["parameters"]
        assert len(m[b]["head_deviation_mm"]) == 17 and m[b]["head_deviation_mm"][0] == pytest.approx(0.0, abs=1e-6)
        assert all(len(v) == len(cfg["noise_px"]) for v in m[b]["noise_mm"].values())
        assert set(m[b]["step_ms"]) == {"baseline", "asm_m2"} and all(v > 0 for v in m[b]["step_ms"].values())
    assert len(m["surface"]["baseline"]) == cfg["grid_points"] and m["surface"]["backbone"] == "mlp"
    assert set(m["dar_lambda_max"]) == {"low_dar", "high_dar"}
    assert len(res.claims) == 9
    assert isinstance(res.artifacts["models"]["mlp"]["asm_m2"], FlatEnsemble)
