import json
import math

import pytest
import torch

from poselab.results import Claim, Results


def _results():
    return Results(experiment="demo", profile="fast", device="cpu", seed=0, seconds=1.23456,
                   metrics={"a": torch.tensor(1.5), "nested": {"b": 2.0, "nan": math.nan}},
                   claims=[Claim("c1", "error falls", "10 mm", "8.0 mm", True),
                           Claim("c2", "x | y", "qualitative", "n/a", None, note="too few samples")])


def test_to_dict_is_json_with_the_documented_keys(tmp_path):
    res = _results()
    path = res.save(tmp_path / "out" / "r.json")
    doc = json.loads(path.read_text())
    assert set(doc) == {"experiment", "profile", "device", "seed", "seconds", "metrics", "claims"}
    assert doc["metrics"] == {"a": 1.5, "nested": {"b": 2.0, "nan": None}}
    assert doc["claims"][0] == {"id": "c1", "claim": "error falls", "paper": "10 mm", "measured": "8.0 mm",
                                "holds": True, "note": "", "status": "holds"}
    assert doc["seconds"] == 1.235


def test_tables_show_every_claim_and_verdict():
    res = _results()
    table = res.claims_table()
    assert "error falls" in table and "undecided" in table and "holds" in table
    md = res.claims_markdown().splitlines()
    assert md[0] == "| claim | paper | ours | status | likely reason if not |"
    assert md[3] == "| x \\| y | qualitative | n/a | undecided | too few samples |"
    assert "profile=fast" in res.summary()


def test_claim_holds_must_be_a_bool_or_none():
    with pytest.raises(TypeError, match="holds must be True, False or None"):
        Claim("c", "claim", "p", "m", 1)


def test_claim_status_follows_holds_unless_noise_or_a_failed_precondition_decides():
    assert [Claim("c", "x", "p", "m", h).status for h in (True, False, None)] == ["holds", "fails", "undecided"]
    noisy = Claim("c", "x", "p", "1.2 vs 1.1 mm", True, note="spread over seeds 0.4 mm", status="within_noise")
    assert noisy.holds is True and noisy.status == "within_noise"
    with pytest.raises(ValueError, match="needs a note"):
        Claim("c", "x", "p", "m", None, status="not_testable")
    with pytest.raises(ValueError, match="contradicts holds=False"):
        Claim("c", "x", "p", "m", False, status="holds")
    with pytest.raises(ValueError, match="unknown status 'maybe'"):
        Claim("c", "x", "p", "m", None, status="maybe")


def test_outline_names_the_claims_without_any_measured_value():
    from poselab.results import Claim, Results

    claims = [Claim("gap", "a gap", "10 mm", "12.3 mm", True), Claim("flat", "flatter", "x", "4.56", None)]
    res = Results("data", "fast", "cpu", 0, 1.0, {"mpjpe_mm": 12.3}, claims)
    assert res.outline() == "data at profile fast: 2 claims checked (gap, flat)"


def test_save_refuses_a_folder_and_leaves_no_temporary_file(tmp_path):
    res = Results(experiment="data", profile="fast", device="cpu", seed=0, seconds=1.0, metrics={"x": 1.0}, claims=[])
    with pytest.raises(IsADirectoryError, match="is a folder; expected a file name"):
        res.save(tmp_path)
    path = res.save(tmp_path / "sub" / "r.json")
    assert json.loads(path.read_text())["metrics"] == {"x": 1.0}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]
