"""The chapter-1 experiment: its helpers, its claims logic and a small checkpointed run."""

import pytest
import torch

from poselab.data.lifting import build_lifting_splits
from poselab.experiments import landscapes as exp
from poselab.models.lifting import build_lifter


@pytest.fixture(scope="module")
def train_set():
    return build_lifting_splits("fast")["train"]


def _lifter(seed=0):
    torch.manual_seed(seed)
    return build_lifter("mlp", hidden=16, num_blocks=1).eval()


def test_finetune_conflict_descends_its_own_subset_and_leaves_the_model(train_set):
    model = _lifter()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    subsets = {"low_dar": train_set.subset(torch.arange(64)), "high_dar": train_set.subset(torch.arange(64, 128))}
    out = exp.finetune_conflict(model, subsets, epochs=3, lr=1e-2, batch_size=32, seed=0)
    assert set(out) == set(subsets) and all(set(v) == set(subsets) for v in out.values())
    assert out["low_dar"]["low_dar"] < 0 and out["high_dar"]["high_dar"] < 0  # each descends its own loss
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_predictions_along_starts_at_the_model_and_leaves_it_unchanged(train_set):
    model = _lifter().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    direction = {k: torch.ones_like(p) for k, p in model.named_parameters()}
    x = train_set.inputs[:4]
    poses = exp.predictions_along(model, direction, [0.0, 0.5], x)
    assert poses.shape == (2, 4, 17, 3)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(poses[0], model(x))
    assert not torch.allclose(poses[1], poses[0])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _metrics(low, high, cross_rise, relative_barrier, extent=(0.5, 0.4)):
    return {"lambda_max": {"low_dar": {"value": low}, "high_dar": {"value": high}},
            "dar_lines": {"low_dar": [3.0, 1.0, 3.0], "high_dar": [5.0, 1.0, 5.0]},
            "image_extent": {"low_dar": extent[0], "high_dar": extent[1]},
            "finetune_conflict": {"low_dar": {"low_dar": -2.0, "high_dar": cross_rise},
                                  "high_dar": {"high_dar": -2.0, "low_dar": cross_rise}},
            "interpolation": {"relative_barrier": relative_barrier, "barrier_mm": 10.0 * relative_barrier}}


@pytest.mark.parametrize("values, expected", [
    ((1.0, 2.0, 0.5, 0.5), {"high_dar_steeper": True, "sub_losses_conflict": True, "barrier_between_seeds": True}),
    ((2.0, 1.0, -0.5, 0.05), {"high_dar_steeper": False, "sub_losses_conflict": False, "barrier_between_seeds": False}),
])
def test_claims_follow_the_measurements(values, expected):
    claims = exp._claims(_metrics(*values))
    assert {c.id: c.holds for c in claims} == expected
    assert all(bool(c.note) == (not c.holds) for c in claims), "a claim that fails must give a likely reason"


def test_dar_note_names_input_scale_only_when_the_data_show_it():
    assert "input scale" in exp._claims(_metrics(2.0, 1.0, 0.5, 0.5, extent=(0.5, 0.4)))[0].note
    assert "input scale" not in exp._claims(_metrics(2.0, 1.0, 0.5, 0.5, extent=(0.3, 0.4)))[0].note


def test_fast_run_measures_everything_and_resumes(fast_run):
    first, folder = fast_run("landscapes").results, fast_run("landscapes").checkpoint_dir
    cfg, m = exp.CONFIGS["fast"], first.metrics
    assert sorted(p.name for p in folder.iterdir()) == ["landscapes-fast-seed0.pt", "landscapes-fast-seed1.pt"]
    assert len(m["line"]["loss_mm"]) == cfg["line_points"] and len(m["surface"]["loss_mm"]) == cfg["grid_points"]
    mid_line, mid_grid = cfg["line_points"] // 2, cfg["grid_points"] // 2
    assert m["line"]["loss_mm"][mid_line] == pytest.approx(m["surface"]["loss_mm"][mid_grid][mid_grid], rel=1e-6)
    assert m["interpolation"]["loss_mm"][0] != m["interpolation"]["loss_mm"][-1]
    assert m["interpolation"]["barrier_mm"] >= 0
    assert set(m["lambda_max"]) == {"train", "low_dar", "high_dar"}
    assert set(m["finetune_conflict"]) == {"low_dar", "high_dar"}
    assert {c.id for c in first.claims} == {"high_dar_steeper", "sub_losses_conflict", "barrier_between_seeds"}

    # a finished checkpoint is loaded, not retrained: training would rewrite it after every epoch
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    second = exp.run("fast", device="cpu", seed=0, progress=False, checkpoint_dir=folder)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    assert second.metrics == first.metrics


def test_predictions_along_rejects_a_direction_of_another_model(train_set):
    model, other = _lifter(), build_lifter("mlp", hidden=8, num_blocks=1)
    direction = {k: torch.ones_like(p) for k, p in other.named_parameters()}
    with pytest.raises(ValueError, match="direction"):
        exp.predictions_along(model, direction, [0.0], train_set.inputs[:2])
