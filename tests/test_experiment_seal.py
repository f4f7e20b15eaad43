"""The chapter-3 experiment: helpers, the claims logic and a small run."""

import pytest
import torch

from poselab.data.lifting import build_lifting_splits
from poselab.experiments import seal as exp
from poselab.methods import seal


def test_fluctuation_is_the_mean_absolute_change_over_the_second_half():
    # second half of 6 epochs: [10, 14, 11] -> |4| and |-3| -> 3.5
    assert exp.fluctuation([50.0, 40.0, 30.0, 10.0, 14.0, 11.0]) == pytest.approx(3.5)
    assert exp.fluctuation([5.0, 5.0, 5.0, 5.0]) == 0.0
    assert exp.fluctuation([7.0]) == 0.0


def test_relative_gain_and_energy_drop():
    e = {"baseline": {"test_in": {"mpjpe_mm": 50.0}}, "margin": {"test_in": {"mpjpe_mm": 40.0}}}
    assert exp.relative_gain(e, "margin") == pytest.approx(0.2)
    assert exp.energy_drop([3.0, 2.0, 0.5]) == pytest.approx(2.5)


def test_split_validation_holds_out_exactly_the_validation_subjects():
    train = build_lifting_splits("fast")["train"]
    fit, val = exp.split_validation(train)
    assert len(fit) + len(val) == len(train)
    assert set(val.subject.unique().tolist()) == set(exp.VALIDATION_SUBJECTS)
    assert not set(fit.subject.unique().tolist()) & set(exp.VALIDATION_SUBJECTS)
    with pytest.raises(ValueError, match="some but not all"):
        exp.split_validation(val)


def test_task_nets_of_a_layout_share_their_initialisation():
    a = exp.build_task_net("gcn", "cmu31", exp.CONFIGS["fast"]["sizes"]["gcn"], seed=2)
    b = exp.build_task_net("gcn", "cmu31", exp.CONFIGS["fast"]["sizes"]["gcn"], seed=2)
    assert a.num_joints == 31
    for (k, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), k
    assert exp.build_energy("cmu31", {"hidden": 8, "num_blocks": 1}, seed=2).num_joints == 31


class _Bowl(torch.nn.Module):
    """E(x, y) = |y - c|^2 summed over joints: its minimum is the pose c."""

    def __init__(self, centre):
        super().__init__()
        self.centre = torch.nn.Parameter(centre)

    def forward(self, x, y):
        return (y - self.centre).pow(2).sum(dim=(-1, -2))


class _Oracle(torch.nn.Module):
    """E(x, y) = |y - t_i|^2 with t_i the true pose of sample i (its index is stored in x[i, 0, 0])."""

    def __init__(self, targets):
        super().__init__()
        self.targets = torch.nn.Parameter(targets)

    def forward(self, x, y):
        return (y - self.targets[x[:, 0, 0].long()]).pow(2).sum(dim=(-1, -2))


def test_choose_step_size_prefers_refinement_towards_the_truth_and_none_away_from_it():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(16, 17, 3, generator=g) * 0.2
    target[:, 0] = 0
    init = target + 0.05 * torch.randn(16, 17, 3, generator=g)
    init[:, 0] = 0
    x = torch.zeros(16, 17, 2)
    x[:, 0, 0] = torch.arange(16.0)
    # each step y <- y - eta * 2 (y - t) shrinks the error by (1 - 2 eta): the largest step wins
    exact = exp.choose_step_size(_Oracle(target), x, init, target, steps=5, grid=(0.01, 0.1))
    assert set(exact["mpjpe_mm"]) == {0.0, 0.01, 0.1} and exact["step_size"] == 0.1
    assert exact["mpjpe_mm"][0.0] == pytest.approx(1000 * float((init - target).norm(dim=-1).mean()), rel=1e-5)
    assert exact["mpjpe_mm"][0.1] == pytest.approx(0.8 ** 5 * exact["mpjpe_mm"][0.0], rel=1e-4)
    # a bowl far from every pose: any step moves the poses away from the truth, so 0 wins
    far = exp.choose_step_size(_Bowl(torch.full((17, 3), 5.0)), x, init, target, steps=5, grid=(0.01, 0.1))
    assert far["step_size"] == 0.0
    assert exp._curve_step(far) == 0.01


def test_gbi_curve_starts_at_the_initial_error():
    g = torch.Generator().manual_seed(1)
    target = torch.randn(8, 17, 3, generator=g) * 0.2
    init = target + 0.05
    curve = exp.gbi_curve(_Bowl(torch.zeros(17, 3)), torch.zeros(8, 17, 2), init, target, steps=3, step_size=0.01)
    assert len(curve["mpjpe_mm"]) == len(curve["p_mpjpe_mm"]) == 4
    assert curve["mpjpe_mm"][0] == pytest.approx(1000 * float((init - target).norm(dim=-1).mean()), rel=1e-5)


def _metrics(good: bool) -> dict:
    """Metrics of one layout pair where SEAL wins everything (good) or loses everything."""
    def split(v, s):
        return {"mpjpe_mm": v, "p_mpjpe_mm": v, "structure": {f"{k}@{t}": s for t in ("0.1", "0.2")
                                                                for k in ("lse", "lle", "bsle")}}

    def entry(gain):
        base, ours = (100.0, 100.0 - gain) if good else (100.0, 110.0)
        variant = lambda v, s: {"test_in": split(v, s), "test_cross": split(v, s)}  # noqa: E731
        curve = [1.0, 0.5] if good else [1.0, 0.9]
        return {"baseline": variant(base, 0.2), "margin": variant(ours, 0.1 if good else 0.3),
                "nce": variant(ours, 0.1), "gbi": variant(ours + 5 if good else ours - 5, 0.2),
                "fluctuation_mm": {"baseline": 5.0, "margin": 1.0 if good else 9.0, "nce": 1.0 if good else 9.0},
                "energy_curve": {"baseline": [1.0, 0.9], "margin": curve, "baseline_nce": [1.0, 0.9], "nce": curve},
                "gbi_refinement": {"seal_curve": {"mpjpe_mm": [50.0] * 6 + ([50.0] if good else [40.0]),
                                                  "p_mpjpe_mm": [40.0] * 6 + ([30.0] if good else [40.0])},
                                   "seal_curve_step_size": 0.01}}

    m = {"layouts": ["h36m17", "cmu31"], "task_nets": ["mlp", "gcn"]}
    m["h36m17"] = {n: entry(2.0) for n in m["task_nets"]}
    m["cmu31"] = {n: entry(5.0) for n in m["task_nets"]}
    return m


def test_claims_follow_the_measurements():
    good, bad = exp._claims(_metrics(True)), exp._claims(_metrics(False))
    ids = [c.id for c in good]
    assert ids == ["lower_error", "whole_body_larger_gain", "structure_ratios", "beats_gbi",
                   "gbi_p_mpjpe_keeps_falling", "stabilises_semgcn", "energy_falls_faster"]
    assert [c.id for c in bad] == ids
    assert all(c.holds is True and c.note == "" for c in good), [(c.id, c.holds) for c in good]
    assert all(c.holds is False and c.note for c in bad), [(c.id, c.holds) for c in bad]


@pytest.fixture(scope="module")
def seal_run(fast_run):
    return fast_run("seal").results


def test_fast_run_measures_every_layout_task_net_and_variant(seal_run):
    m, cfg = seal_run.metrics, exp.CONFIGS["fast"]
    assert m["layouts"] == list(cfg["layouts"]) and m["task_nets"] == list(cfg["task_nets"])
    for objective in seal.OBJECTIVES:
        assert m["alpha"][objective] in cfg["alphas"][objective]
        assert set(m["alpha_search"][objective]["val_mpjpe_mm"]) == set(cfg["alphas"][objective])
    for lay in m["layouts"]:
        for n in m["task_nets"]:
            e = m[lay][n]
            for v in exp.VARIANTS:
                for split in ("test_in", "test_cross"):
                    assert e[v][split]["mpjpe_mm"] > e[v][split]["p_mpjpe_mm"] > 0
                    assert all(0.0 <= r <= 1.0 for r in e[v][split]["structure"].values())
            for key in ("baseline", "margin", "baseline_nce", "nce"):
                assert len(e["energy_curve"][key]) == cfg["epochs"]
            assert set(e["val_mpjpe_mm"]) == {"baseline", "margin", "nce"}
            g = e["gbi_refinement"]
            assert g["step_size"] in (0.0, *cfg["gbi_step_sizes"])
            assert len(g["curve"]["mpjpe_mm"]) == len(g["seal_curve"]["p_mpjpe_mm"]) == cfg["gbi_steps"] + 1
    preds = seal_run.artifacts["predictions"]["cmu31"]["mlp"]
    assert set(preds) == set(exp.VARIANTS) and preds["margin"].shape[1:] == (31, 3)
    assert len(seal_run.claims) == 7


def test_fast_run_baseline_and_seal_start_from_the_same_task_net(seal_run):
    models = seal_run.artifacts["models"]["h36m17"]["mlp"]
    assert isinstance(models["margin"], seal.SealModel) and models["margin"].alpha == seal_run.metrics["alpha"]["margin"]
    # GBI's energy was trained on the baseline's frozen predictions: the ground truth scores lower
    data = seal_run.artifacts["splits"]["h36m17"]["test_in"]
    from poselab.evaluation import predict

    pred = predict(models["baseline"], data.inputs, device="cpu")
    energy = models["gbi_energy"]
    assert float(seal.energies(energy, data.inputs, data.targets).mean()) < float(seal.energies(energy, data.inputs, pred).mean())
