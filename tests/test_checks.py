import numpy as np
import pytest
import torch

from poselab.checks import (check_choice, check_positive, check_profile, check_same_shape, check_shape,
                            resolve_device, seed_everything)


def test_check_shape_accepts_matching_and_symbolic_sizes():
    check_shape("x", torch.zeros(4, 17, 3), ("B", 17, 3))
    check_shape("x", np.zeros((2, 5, 2)), (None, "J", 2))


@pytest.mark.parametrize("shape, expected, match", [
    ((4, 16, 3), ("B", 17, 3), r"x: expected shape \(B, 17, 3\), got \(4, 16, 3\)"),
    ((17, 3), ("B", 17, 3), "got \\(17, 3\\)"),
    ((3, 3, 2), ("J", "J", 3), "got \\(3, 3, 2\\)"),
    ((3, 4, 3), ("J", "J", 3), "equal 'J' sizes"),
])
def test_check_shape_rejects_with_a_message_naming_both_shapes(shape, expected, match):
    with pytest.raises(ValueError, match=match):
        check_shape("x", torch.zeros(shape), expected)


def test_check_same_shape_names_every_argument():
    check_same_shape(a=torch.zeros(2, 3), b=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"pred \(2, 3\), target \(3, 2\)"):
        check_same_shape(pred=torch.zeros(2, 3), target=torch.zeros(3, 2))


def test_check_choice_and_profile_list_the_choices():
    assert check_choice("rig", "studio", ("studio", "wild")) == "studio"
    with pytest.raises(ValueError, match="unknown rig 'lab'; expected one of 'studio', 'wild'"):
        check_choice("rig", "lab", ("studio", "wild"))
    assert check_profile("fast") == "fast"
    with pytest.raises(ValueError, match="'fast', 'book', 'full'"):
        check_profile("quick")


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "1"])
def test_check_positive_rejects(value):
    with pytest.raises(ValueError, match="expected a finite number > 0"):
        check_positive("sigma", value)


def test_check_positive_allow_zero():
    assert check_positive("sigma", 0.0, allow_zero=True) == 0.0


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device: expected 'auto'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device(torch.device("cuda", 0))


@pytest.mark.parametrize("device", ["meta", "mps", "xla", "cpu:3", "cpu:0", "cuda:-1", "cuda:01", "cuda:1.5",
                                    " cuda", "cuda ", "CPU", "Auto", "", "cuda:", "cuda:0:1"])
def test_resolve_device_refuses_other_strings_up_front(device):
    with pytest.raises(ValueError, match=r"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N'.*; got "):
        resolve_device(device)


@pytest.mark.parametrize("device", [torch.device("meta"), torch.device("cpu", 3)])
def test_resolve_device_refuses_other_torch_devices(device):
    with pytest.raises(ValueError, match=r"device: expected .*; got torch.device\("):
        resolve_device(device)


@pytest.mark.parametrize("device, hint", [(0, "pass 'cuda:0'"), (None, "NoneType"), (True, "bool True"),
                                          (1.0, "float")])
def test_resolve_device_refuses_non_strings_with_a_type_error(device, hint):
    with pytest.raises(TypeError, match=f"device: expected .*{hint}"):
        resolve_device(device)


def test_resolve_device_checks_the_cuda_index_against_the_device_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"'cuda:2' asks for CUDA device 2 but this machine has 2 "
                                         r"\(cuda:0 to cuda:1\); use 'cuda' or an index below 2"):
        resolve_device("cuda:2")
    with pytest.raises(ValueError, match="asks for CUDA device 7"):
        resolve_device(torch.device("cuda", 7))


@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1, np.int64(5)])
def test_seed_everything_accepts_seeds_below_2_to_the_32(seed):
    assert isinstance(seed_everything(seed), torch.Generator)


@pytest.mark.parametrize("seed", [-1, 2**32, 2**64])
def test_seed_everything_refuses_seeds_outside_the_range(seed):
    with pytest.raises(ValueError, match=rf"seed: expected an int from 0 to {2**32 - 1}, got {seed}; pick a seed"):
        seed_everything(seed)


def test_check_seed_leaves_headroom_for_derived_seeds():
    from poselab.checks import check_seed

    assert check_seed(2**32 - 3, headroom=2) == 2**32 - 3
    with pytest.raises(ValueError, match=r"from 0 to 4294967293 \(seeds derived from it, up to seed \+ 2"):
        check_seed(2**32 - 2, headroom=2)
    with pytest.raises(TypeError, match="seed: expected an int"):
        check_seed(True)


def test_seed_everything_makes_torch_and_numpy_reproducible():
    seed_everything(3)
    a = (torch.rand(3), np.random.rand(3))
    g = seed_everything(3)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert isinstance(g, torch.Generator)
    with pytest.raises(TypeError, match="seed: expected an int"):
        seed_everything(1.5)


def test_check_int():
    from poselab.checks import check_int

    assert check_int("n", 3) == 3 and check_int("n", 0, minimum=0) == 0
    with pytest.raises(ValueError, match="n: expected an int >= 1, got 0"):
        check_int("n", 0)
    with pytest.raises(TypeError, match="n: expected an int >= 1, got bool True"):
        check_int("n", True)
    with pytest.raises(TypeError, match="got float 2.0"):
        check_int("n", 2.0)


@pytest.mark.parametrize("value, expected", [
    (2, 2), (0.25, 0.25), (np.float32(0.5), 0.5), (np.float64(0.1), 0.1), (np.int64(3), 3), (np.uint8(7), 7),
    (np.array(1.5), 1.5), (np.array(4, dtype=np.int16), 4), (torch.tensor(0.75), 0.75), (torch.tensor(5), 5),
])
def test_as_number_accepts_numpy_and_torch_scalars(value, expected):
    from poselab.checks import as_number

    out = as_number("x", value)
    assert out == expected and type(out) in (int, float, np.float64)
    assert isinstance(out, int) == isinstance(expected, int)


def test_as_number_keeps_python_numbers_and_exact_float32_value():
    from poselab.checks import as_number

    half = np.float64(0.5)
    assert as_number("x", half) is half  # a float subclass: returned as it is
    assert as_number("x", np.float32(0.1)) == 0.10000000149011612  # the float32 value, not 0.1


@pytest.mark.parametrize("value", [True, np.bool_(False), np.array(True), torch.tensor(True), "1", None, [1.0],
                                   np.array([1.0, 2.0]), torch.tensor([1.0]), 1 + 2j, torch.tensor(1j)])
def test_as_number_refuses_bools_and_non_scalars(value):
    from poselab.checks import as_number

    with pytest.raises(TypeError, match="x: expected a number"):
        as_number("x", value)


def test_check_positive_number():
    from poselab.checks import check_positive_number

    assert check_positive_number("alpha", np.float32(0.5)) == 0.5
    assert check_positive_number("alpha", torch.tensor(0, dtype=torch.int64), allow_zero=True) == 0
    for bad in (0, -1.0, np.float32("nan"), torch.tensor(float("inf")), True, np.array([1.0]), "1", 10**400):
        with pytest.raises(ValueError, match="alpha: expected a finite number > 0"):
            check_positive_number("alpha", bad)


def test_check_float_tensor_names_the_argument_and_checks_the_shape():
    from poselab.checks import check_float_tensor

    x = torch.zeros(2, 3)
    assert check_float_tensor("x", x, ("B", 3)) is x
    with pytest.raises(TypeError, match=r"x: expected a torch.Tensor \(floating point\), got list"):
        check_float_tensor("x", [0.0])
    with pytest.raises(TypeError, match="x: expected a floating-point tensor, got dtype torch.int64"):
        check_float_tensor("x", torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="x"):
        check_float_tensor("x", x, ("B", 4))


@pytest.mark.parametrize("size, error, says", [((4, 0), ValueError, r"size\[1\]: expected an int >= 1"),
                                                (4, ValueError, r"size: expected \(H, W\)"),
                                                ((4.0, 2), TypeError, r"size\[0\]: expected an int")])
def test_check_size_pair(size, error, says):
    from poselab.checks import check_size_pair

    assert check_size_pair("size", torch.Size([3, 5])) == (3, 5)
    with pytest.raises(error, match=says):
        check_size_pair("size", size)


def test_check_generator_and_probability():
    from poselab.checks import check_generator, check_probability

    g = torch.Generator()
    assert check_generator(g, cpu=True) is g and check_generator(None) is None
    with pytest.raises(TypeError, match="generator: expected a torch.Generator or None, got int"):
        check_generator(3)
    assert check_probability("dropout", 0) == 0.0
    for bad in (1.0, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match=r"dropout: expected a probability in \[0, 1\)"):
            check_probability("dropout", bad)
