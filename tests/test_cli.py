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
