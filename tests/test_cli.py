import json
import math

import pytest
import torch

from poselab.__main__ import main


def test_list_names_every_experiment(capsys):
    from poselab.experiments import EXPERIMENTS

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPERIMENTS)


def test_unknown_experiment_and_profile_are_rejected_with_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "nope", "--profile", "fast"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reproduce", "data", "--profile", "huge"])
    assert "choose from" in capsys.readouterr().err


def test_run_experiment_rejects_bad_names():
    from poselab.experiments import run_experiment

    with pytest.raises(ValueError, match="unknown experiment 'nope'"):
        run_experiment("nope")
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        run_experiment("data", profile="huge")


def test_bench_reports_every_entry_as_positive_numbers(capsys):
    assert main(["bench", "--device", "cpu", "--repeats", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    entries = report["entries"]
    assert set(entries) == {"bvh_parsing", "forward_kinematics", "lifting_data_build", "lifter_train_step",
                            "ensemble_train_step", "hessian_vector_product", "seal_train_step", "image_rendering",
                            "heatmap_train_step", "hamipose_train_step", "meta_tto_train_step"}
    from poselab.models.lifting import LIFTERS

    assert set(entries["lifter_train_step"]) == set(LIFTERS)
    assert entries["lifter_train_step"]["mlp"]["ratio_vs_mlp"] == 1.0
    assert set(entries["ensemble_train_step"]) >= {"ensemble_ratio_vs_single", "independent_ratio_vs_single"}
    assert "hvp_ratio_vs_gradient" in entries["hessian_vector_product"]
    assert set(entries["seal_train_step"]) == {"mlp", "gcn", "target"}
    assert entries["seal_train_step"]["target"] == "<= 2x"
    assert set(entries["image_rendering"]) == {f"{k}_{s}px" for k in ("images_per_s", "anny_share", "render_share")
                                               for s in (64, 128)}
    steps = entries["heatmap_train_step"]
    assert set(steps) == {"supervised", "consistency", "easy_hard", "dual", "target"}
    assert steps["supervised"]["ratio_vs_supervised"] == 1.0
    assert steps["dual"]["ratio_vs_easy_hard"] == pytest.approx(steps["dual"]["step_ms"] / steps["easy_hard"]["step_ms"])
    assert "2.2x" in steps["target"]
    ham = entries["hamipose_train_step"]
    assert set(ham) == {"plain_ms", "mean_teacher_ms", "hamipose_ms", "ratio", "target"}
    assert ham["ratio"] == pytest.approx(ham["hamipose_ms"] / ham["plain_ms"])
    meta = entries["meta_tto_train_step"]
    assert set(meta) == {"vectorised_ms", "loop_ms", "speedup", "target"} and "5x" in meta["target"]
    notes = {name: e.pop("target") for name, e in entries.items() if "target" in e}  # strings, not timings
    assert all(isinstance(n, str) and n for n in notes.values())
    flat = [v for e in entries.values() for v in (e.values() if not isinstance(next(iter(e.values())), dict)
                                                 else [x for d in e.values() for x in d.values()])]
    assert all(isinstance(v, float) and v > 0 for v in flat)


def test_bench_seal_step_times_both_steps():
    from poselab.bench import bench_seal_step

    report = bench_seal_step("cpu", repeats=1, batch_size=32, task_nets=("mlp", "cnn"))
    assert set(report) == {"mlp", "cnn"}
    for out in report.values():
        assert set(out) == {"plain_ms", "seal_ms", "ratio"}
        assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in out.values())
        assert out["ratio"] == pytest.approx(out["seal_ms"] / out["plain_ms"])
    with pytest.raises(ValueError, match="repeats: expected an int >= 1"):
        bench_seal_step("cpu", repeats=0)


def test_bench_meta_step_times_both_steps():
    from poselab.bench import bench_meta_step

    out = bench_meta_step("cpu", repeats=1, batch=3)
    assert set(out) == {"vectorised_ms", "loop_ms", "speedup"}
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in out.values())
    assert out["speedup"] == pytest.approx(out["loop_ms"] / out["vectorised_ms"])
    with pytest.raises(ValueError, match="repeats: expected an int >= 1"):
        bench_meta_step("cpu", repeats=0)


def test_bench_rejects_bad_repeats():
    from poselab.bench import run_benchmarks

    with pytest.raises(ValueError, match="repeats: expected an int >= 1"):
        run_benchmarks(repeats=0)


def test_reproduce_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["reproduce", "data", "--profile", "fast", "--device", "cpu", "--seed", "0", "--quiet",
                 "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc) == {"experiment", "profile", "device", "seed", "seconds", "metrics", "claims"}
    assert (doc["experiment"], doc["profile"], doc["device"], doc["seed"]) == ("data", "fast", "cpu", 0)
    assert {c["id"] for c in doc["claims"]} == {"simple_baseline_in_domain", "cross_domain_gap", "high_dar_is_harder"}
    assert all(set(c) == {"id", "claim", "paper", "measured", "holds", "note"} for c in doc["claims"])
    assert all(bool(c["note"]) == (c["holds"] is False) for c in doc["claims"])
    printed = capsys.readouterr().out
    assert "claims:" in printed and "cross" in printed


def test_training_step_seconds_times_every_model_and_trains_them():
    from poselab.bench import training_step_seconds

    models = {"a": torch.nn.Linear(2, 3), "b": torch.nn.Linear(2, 3)}
    before = models["a"].weight.clone()
    x, y = torch.randn(8, 2), torch.randn(8, 3)

    def loss(model, x, y):
        return (model(x) - y).pow(2).mean()

    t = training_step_seconds(models, x, y, loss, repeats=2, device="cpu")
    assert set(t) == {"a", "b"} and all(v > 0 for v in t.values())
    assert not torch.equal(models["a"].weight, before)
    with pytest.raises(ValueError, match="repeats: expected an int >= 1"):
        training_step_seconds(models, x, y, loss, repeats=0, device="cpu")
    with pytest.raises(ValueError, match="models: expected at least one model"):
        training_step_seconds({}, x, y, loss, repeats=1, device="cpu")
