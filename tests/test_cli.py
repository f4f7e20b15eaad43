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
    assert all(set(c) == {"id", "claim", "paper", "measured", "holds", "note", "status"} for c in doc["claims"])
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


def _fake_results(calls=None):
    """A stand-in for run_experiment that records its arguments and returns a tiny Results."""
    from poselab.results import Claim, Results

    def run(name, **kwargs):
        if calls is not None:
            calls.append((name, kwargs))
        return Results(experiment=name, profile=kwargs["profile"], device="cpu", seed=kwargs["seed"], seconds=0.1,
                       metrics={"x": 1.0}, claims=[Claim("c", "a claim", "paper", "measured", True)])
    return run


@pytest.fixture
def fake_run(monkeypatch):
    calls = []
    monkeypatch.setattr("poselab.experiments.run_experiment", _fake_results(calls))
    return calls


@pytest.mark.parametrize("make_bad, says", [
    (lambda tmp: tmp, "is a folder; expected a file name"),
    (lambda tmp: tmp / "missing" / "r.json", "does not exist; create it first"),
    (lambda tmp: (tmp / "file").write_text("x") and tmp / "file" / "r.json", "is a file, not a folder"),
])
def test_out_is_checked_before_anything_runs(tmp_path, capsys, fake_run, make_bad, says):
    out = make_bad(tmp_path)
    assert main(["reproduce", "data", "--profile", "fast", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("poselab: error: --out") and says in err and err.count("\n") == 1
    assert fake_run == [], "the experiment must not run when --out cannot be written"


def test_summary_is_printed_before_saving_and_the_json_is_atomic(tmp_path, capsys, fake_run, monkeypatch):
    out = tmp_path / "r.json"
    out.write_text('{"old": true}\n')

    def broken_dump(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("poselab.results.os.fsync", broken_dump)
    assert main(["reproduce", "data", "--profile", "fast", "--quiet", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "claims:" in captured.out, "the summary must be shown even when saving fails"
    assert "No space left on device" in captured.err
    assert json.loads(out.read_text()) == {"old": True}, "a failed save must leave the previous file whole"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"], "no temporary file may be left behind"


def test_errors_are_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    def bad(name, **kwargs):
        raise ValueError("train_set: expected (N, 17, 2)\ngot (N, 16, 2)")

    monkeypatch.setattr("poselab.experiments.run_experiment", bad)
    assert main(["reproduce", "data", "--profile", "fast", "--quiet"]) == 2
    assert capsys.readouterr().err == "poselab: error: train_set: expected (N, 17, 2) got (N, 16, 2)\n"
    with pytest.raises(ValueError, match="expected"):
        main(["reproduce", "data", "--profile", "fast", "--quiet", "--debug"])


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "mps"])
def test_a_bad_device_is_refused_before_the_run(capsys, fake_run, device):
    assert main(["reproduce", "data", "--profile", "fast", "--device", device]) == 2
    assert "device: expected 'auto', 'cpu', 'cuda' or 'cuda:N'" in capsys.readouterr().err
    assert fake_run == []


@pytest.mark.parametrize("seed", ["-1", str(2**32), "1.5", "ten"])
def test_seeds_outside_the_range_are_refused(capsys, fake_run, seed):
    with pytest.raises(SystemExit) as exit_:
        main(["reproduce", "data", "--profile", "fast", "--seed", seed])
    assert exit_.value.code == 2
    assert "--seed: expected an integer from 0 to" in capsys.readouterr().err or seed in ("-1", str(2**32))
    assert fake_run == []


def test_fresh_ignores_checkpoints_and_is_named_by_the_incompatibility_error(tmp_path, fake_run):
    assert main(["reproduce", "data", "--profile", "fast", "--quiet", "--checkpoint-dir", str(tmp_path)]) == 0
    assert main(["reproduce", "data", "--profile", "fast", "--quiet", "--checkpoint-dir", str(tmp_path),
                 "--fresh"]) == 0
    assert [kwargs["resume"] for _, kwargs in fake_run] == [True, False]
    from poselab.checkpoint import START_OVER
    assert "--fresh" in START_OVER and "resume=False" in START_OVER


@pytest.mark.parametrize("checkpoint_dir, says", [(None, "no --checkpoint-dir was given"),
                                                  ("ckpt", "checkpointed in 'ckpt'")])
def test_ctrl_c_says_where_the_checkpoint_is_and_how_to_resume(capsys, monkeypatch, checkpoint_dir, says):
    def interrupted(name, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("poselab.experiments.run_experiment", interrupted)
    argv = ["reproduce", "seal", "--profile", "fast", "--fresh"] + (["--checkpoint-dir", checkpoint_dir]
                                                                    if checkpoint_dir else [])
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert says in err and "python -m poselab reproduce seal --profile fast" in err
    command = err[err.index("python -m poselab"):]
    assert "--fresh" not in command, "the resume command must not start over"


def test_regression_compares_a_run_with_its_reference(tmp_path, capsys, fake_run):
    from poselab import regression

    doc = _fake_results()("data", profile="fast", seed=0).to_dict()
    other = json.loads(json.dumps(doc))
    other["metrics"]["x"] = 1.5
    ref = {"experiment": "data", **regression.build_reference({"a": doc, "b": other})}
    (tmp_path / "data.json").write_text(json.dumps(ref))
    assert main(["regression", "data", "--dir", str(tmp_path)]) == 0
    assert "data: within the reference" in capsys.readouterr().out
    ref["quantities"]["metrics/x"] = {"value": 3.0, "spread": 0.0, "tolerance": 0.1}
    (tmp_path / "data.json").write_text(json.dumps(ref))
    assert main(["regression", "data", "--dir", str(tmp_path)]) == 1
    assert "metrics/x: 1.0, expected 3 +- 0.1" in capsys.readouterr().out
    assert main(["regression", "nope"]) == 2


def test_run_experiment_passes_resume_and_checks_seed_and_resume(monkeypatch):
    import importlib
    import inspect

    from poselab.experiments import EXPERIMENTS, run_experiment

    for name, module in EXPERIMENTS.items():
        params = inspect.signature(importlib.import_module(module).run).parameters
        assert params["resume"].default is True, f"{name}.run must take resume=True by default"
    seen = {}
    monkeypatch.setattr(importlib.import_module(EXPERIMENTS["data"]), "run", lambda **kw: seen.update(kw) or "ran")
    assert run_experiment("data", profile="fast", resume=False) == "ran" and seen["resume"] is False
    with pytest.raises(ValueError, match=r"seed: expected an int from 0 to 4294967293 \(seeds derived"):
        run_experiment("data", profile="fast", seed=2**32 - 2)
    with pytest.raises(TypeError, match="resume: expected a bool"):
        run_experiment("data", profile="fast", resume="no")


def test_no_experiment_imports_another():
    import ast
    from pathlib import Path

    import poselab.experiments as package

    for path in Path(package.__file__).parent.glob("*.py"):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | \
                   {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in imported if m.startswith("poselab.experiments")}, f"{path.name} imports an experiment"
