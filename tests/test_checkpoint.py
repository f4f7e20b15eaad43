"""poselab.checkpoint: nested states to safetensors and back, exactly; fingerprints; random states."""

import pickle
import random

import numpy as np
import pytest
import torch

from poselab import checkpoint as C


def test_pack_and_unpack_restore_every_kind_of_value_exactly(tmp_path):
    opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    opt.param_groups[0]["params"][0].grad = torch.ones(2)
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": C.rng_state(torch.device("cpu")), "floats": [0.1, 1e-300, -0.0],
             "tuple": (1, "a", None), "nested": {"x": torch.arange(3, dtype=torch.int16)}, 3: "int key"}
    C.save_state(tmp_path / "s.safetensors", state, {"seed": 1}, format="test/1")
    back = C.load_state(tmp_path / "s.safetensors", {"seed": 1}, format="test/1")
    assert back["optimizer"]["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])
    assert back["optimizer"]["param_groups"] == opt.state_dict()["param_groups"]
    assert back["floats"] == [0.1, 1e-300, -0.0] and back["tuple"] == (1, "a", None) and back[3] == "int key"
    assert back["nested"]["x"].dtype == torch.int16
    numpy_state = back["rng"]["numpy"]
    assert numpy_state[1].dtype == np.uint32 and (numpy_state[1] == np.random.get_state()[1]).all()


def test_restored_random_states_draw_the_same_numbers():
    state = C.rng_state(torch.device("cpu"))
    expected = (torch.rand(2), np.random.rand(), random.random())
    tensors, skeleton = C.pack(state)
    C.set_rng_state(C.unpack(tensors, skeleton), torch.device("cpu"))
    assert torch.equal(torch.rand(2), expected[0]) and np.random.rand() == expected[1] and random.random() == expected[2]


def test_what_cannot_be_stored_is_named():
    with pytest.raises(TypeError, match="cannot store object at /a/0"):
        C.pack({"a": [object()]})


def test_another_fingerprint_names_the_setting_and_how_to_start_over(tmp_path):
    C.save_state(tmp_path / "s.safetensors", {"x": 1}, {"lr": 0.1, "model": {"dropout": 0.1}}, format="test/1")
    with pytest.raises(ValueError, match=r"lr: 0.1 in the checkpoint vs 0.2 now; model/dropout: 0.1 .* vs 0.3 now.*--fresh"):
        C.load_state(tmp_path / "s.safetensors", {"lr": 0.2, "model": {"dropout": 0.3}}, format="test/1")


def test_a_pickle_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "s.safetensors").write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(ValueError, match="could not be read.*delete it, or start over"):
        C.load_state(tmp_path / "s.safetensors", {}, format="test/1")
    assert not marker.exists()


def test_zero_d_arrays_keep_their_shape_and_colliding_names_are_refused():
    tensors, skeleton = C.pack({"a": np.array(3.5)})
    assert C.unpack(tensors, skeleton)["a"].shape == ()
    with pytest.raises(ValueError, match="two values would be stored as '/a/b'"):
        C.pack({"a/b": torch.ones(1), "a": {"b": torch.zeros(1)}})
