"""Tests for poselab.tensorfile: safetensors + JSON files that load without running code."""

import pickle

import pytest
import torch

from poselab.tensorfile import TensorFileError, load_tensor_file, save_tensor_file, tensor_sha256


def some_tensors():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    return {
        "float": base,
        "view": base[:, 1:4].t(),  # non-contiguous, shares the storage of "float"
        "scalar": torch.tensor(3.5),
        "uint8": torch.randint(0, 256, (2, 3, 5), generator=g, dtype=torch.uint8),
        "bool": torch.rand(7, generator=g) > 0.5,
        "int64": torch.arange(-3, 3),
        "half": base.to(torch.bfloat16),
        "empty": torch.zeros(0, 3),
        "nan": torch.tensor([float("nan"), float("inf"), -0.0]),
    }


def test_round_trip_is_exact(tmp_path):
    path = tmp_path / "sub" / "f.safetensors"
    tensors = some_tensors()
    meta = {"history": [{"loss": 0.1 + 0.2, "nan": float("nan")}], "names": ["a", "b"], "n": 3}
    save_tensor_file(path, tensors, meta, format="test/1")
    loaded, meta2 = load_tensor_file(path, format="test/1")
    assert set(loaded) == set(tensors) and not list(path.parent.glob("*.tmp"))
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape, name
        assert tensor_sha256(loaded[name]) == tensor_sha256(t), name
        if name != "nan":
            assert torch.equal(loaded[name], t), name
    assert meta2["history"][0]["loss"] == 0.1 + 0.2 and meta2["names"] == ["a", "b"] and meta2["n"] == 3


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "f.safetensors"
    save_tensor_file(path, {"a": torch.ones(2)}, {}, format="test/1")
    with pytest.raises(TypeError):
        save_tensor_file(path, {"a": torch.zeros(2)}, {"bad": object()}, format="test/1")
    assert torch.equal(load_tensor_file(path, format="test/1")[0]["a"], torch.ones(2))
    assert not list(tmp_path.glob("*.tmp"))


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_pickles_and_damage_are_refused_with_the_file_and_the_remedy(tmp_path):
    path, marker = tmp_path / "f.safetensors", tmp_path / "marker"
    for writer in (torch.save, lambda obj, p: p.write_bytes(pickle.dumps(obj))):
        writer({"a": _Payload(marker)}, path)
        with pytest.raises(TensorFileError, match=r"cache '.*f\.safetensors' could not be read \(not a safetensors "
                                                  r"file or truncated.*\); remove it"):
            load_tensor_file(path, format="test/1", what="cache", recover="remove it")
    assert not marker.exists()
    save_tensor_file(path, {"a": torch.arange(100.0)}, {}, format="test/1")
    with pytest.raises(TensorFileError, match=r"expected format 'other/1', found 'test/1'"):
        load_tensor_file(path, format="other/1")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(TensorFileError, match=r"tensor\(s\) a do not match their SHA-256"):
        load_tensor_file(path, format="test/1")
    from safetensors.torch import save_file

    save_file({"a": torch.ones(1)}, str(path))  # a safetensors file from elsewhere
    with pytest.raises(TensorFileError, match="no poselab metadata"):
        load_tensor_file(path, format="test/1")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_tensor_file(tmp_path / "missing", format="test/1")
    with pytest.raises(TensorFileError, match="is a folder"):
        load_tensor_file(tmp_path, format="test/1")


def test_tensor_sha256_is_layout_independent_and_sees_every_bit():
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    assert tensor_sha256(x) == tensor_sha256(x.t().contiguous().t())  # same values, another layout
    y = x.clone()
    y.view(torch.int32)[37, 2] ^= 1  # one bit of one value
    assert tensor_sha256(y) != tensor_sha256(x)
    assert tensor_sha256(x) != tensor_sha256(x.reshape(3, 50))  # shape counts
    assert tensor_sha256(x) != tensor_sha256(x.double())  # dtype counts
    rng = torch.get_rng_state()
    tensor_sha256(x)
    assert torch.equal(rng, torch.get_rng_state())
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        tensor_sha256([1, 2])
