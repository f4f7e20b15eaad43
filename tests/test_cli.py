import json

import pytest

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
    assert set(entries) == {"bvh_parsing", "forward_kinematics", "lifting_data_build", "lifter_train_step"}
    from poselab.models.lifting import LIFTERS

    assert set(entries["lifter_train_step"]) == set(LIFTERS)
    assert entries["lifter_train_step"]["mlp"]["ratio_vs_mlp"] == 1.0
    flat = [v for e in entries.values() for v in (e.values() if "frames_per_s" in e or "samples_per_s" in e
                                                 else [x for d in e.values() for x in d.values()])]
    assert all(isinstance(v, float) and v > 0 for v in flat)


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
