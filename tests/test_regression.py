"""poselab.regression: flattening results, references from runs under several settings, comparison."""

import pytest

from poselab import regression
from poselab.experiments import EXPERIMENTS


def _doc(mpjpe, samples=10, holds=True, flag=True):
    return {"metrics": {"test": {"mpjpe_mm": mpjpe, "samples": samples}, "curve": [1.0, mpjpe], "ok": flag},
            "claims": [{"id": "gap", "holds": holds}]}


def test_flatten_names_every_leaf_and_each_claim_verdict():
    assert regression.flatten(_doc(100.0)) == {"metrics/test/mpjpe_mm": 100.0, "metrics/test/samples": 10,
                                               "metrics/curve/0": 1.0, "metrics/curve/1": 100.0,
                                               "metrics/ok": True, "claims/gap/holds": True}


def test_flatten_leaves_out_timings():
    doc = _doc(100.0)
    doc["metrics"]["test"].update(train_seconds=2.1, step_ms={"mlp": 3.0}, seconds_per_epoch=1.0)
    assert regression.flatten(doc) == regression.flatten(_doc(100.0))


def test_flatten_refuses_what_is_not_a_results_document():
    with pytest.raises(ValueError, match="metrics"):
        regression.flatten({"claims": []})


def test_reference_takes_the_middle_the_spread_and_a_margin():
    ref = regression.build_reference({"a": _doc(100.0), "b": _doc(102.0), "c": _doc(101.0)}, margin=3.0)
    entry = ref["quantities"]["metrics/test/mpjpe_mm"]
    assert entry == {"value": 101.0, "spread": 2.0, "tolerance": 6.0}
    assert ref["quantities"]["metrics/test/samples"] == {"value": 10}
    assert ref["quantities"]["metrics/curve/0"]["tolerance"] == pytest.approx(regression.REL_FLOOR)
    assert ref["settings"] == ["a", "b", "c"]


def test_a_verdict_the_settings_disagree_on_is_unstable_and_not_compared():
    ref = regression.build_reference({"a": _doc(100.0, holds=True), "b": _doc(100.0, holds=False)})
    assert ref["quantities"]["claims/gap/holds"] == {"unstable": ["False", "True"]}
    assert regression.compare(_doc(100.0, holds=None), ref) == []


def test_compare_reports_what_leaves_its_tolerance_or_changes_exactly():
    ref = regression.build_reference({"a": _doc(100.0), "b": _doc(102.0)}, margin=3.0)  # 101 +- 6
    assert regression.compare(_doc(106.9), ref) == []
    problems = regression.compare(_doc(107.5, samples=11, flag=False), ref)
    assert [p.split(":")[0] for p in problems] == ["metrics/curve/1", "metrics/ok", "metrics/test/mpjpe_mm",
                                                   "metrics/test/samples"]
    assert problems[1] == "metrics/ok: False, expected exactly True"
    assert problems[2] == "metrics/test/mpjpe_mm: 107.5, expected 101 +- 6 (measured spread 2)"
    assert problems[3] == "metrics/test/samples: 11, expected exactly 10"


def test_compare_reports_quantities_on_one_side_only():
    ref = regression.build_reference({"a": _doc(100.0), "b": _doc(100.0)})
    doc = _doc(100.0)
    doc["metrics"]["new"] = 1.0
    del doc["metrics"]["ok"]
    assert regression.compare(doc, ref) == ["metrics/ok: missing from the run (the reference has it)",
                                            "metrics/new: not in the reference (new quantity)"]


def test_a_reference_needs_two_settings():
    with pytest.raises(ValueError, match="at least 2"):
        regression.build_reference({"a": _doc(1.0)})


def test_a_reference_on_disk_names_its_experiment(tmp_path):
    with pytest.raises(FileNotFoundError, match="--refresh"):
        regression.load_reference("data", tmp_path)
    (tmp_path / "data.json").write_text('{"experiment": "seal", "quantities": {}}')
    with pytest.raises(ValueError, match="not a reference of 'data'"):
        regression.load_reference("data", tmp_path)


def test_measuring_settings_pin_capability_threads_and_a_private_cache(tmp_path):
    env = regression.setting_env(("avx2", 1), tmp_path / "cache")
    assert (env["ATEN_CPU_CAPABILITY"], env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]) == ("avx2", "1", "1")
    assert env["POSELAB_CACHE_DIR"] == str(tmp_path / "cache")
    assert regression.setting_name(("avx512", 2)) == "avx512/2"
    assert ("default", 1) in regression.available_settings()  # every x86 and ARM CPU has the default kernels


@pytest.mark.regression
@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_fast_results_are_within_the_measured_tolerances(name, fast_run):
    """The session's fast run of each experiment against its committed reference (tests/regression/)."""
    reference = regression.load_reference(name)
    problems = regression.compare(fast_run(name).results.to_dict(), reference)
    assert not problems, (f"{name}: {len(problems)} quantities outside the reference (tolerance = "
                          f"{reference['margin']} x the spread over {', '.join(reference['settings'])}):\n  "
                          + "\n  ".join(problems[:20]))


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_references_are_current(name):
    """Each reference was made by the refresh command at fast, seed 0, and covers at least two settings."""
    ref = regression.load_reference(name)
    assert (ref["profile"], ref["seed"], ref["command"]) == ("fast", 0, regression.REFRESH_COMMAND)
    assert len(ref["settings"]) >= 2 and ref["quantities"]
    assert all(e["tolerance"] >= ref["margin"] * e["spread"] for e in ref["quantities"].values() if "tolerance" in e)


def test_verdicts_decided_by_timings_are_not_compared():
    doc = {"experiment": "flat_ensembles", "metrics": {"x": 1.0},
           "claims": [{"id": "ensemble_costs_about_one_network", "holds": True}, {"id": "other", "holds": False}]}
    assert regression.flatten(doc) == {"metrics/x": 1.0, "claims/other/holds": False}
    assert regression.timed_claims("flat_ensembles") == {"ensemble_costs_about_one_network"}
