"""Argument checking shared by every public function, and device/seed helpers.

Every check raises an error that names the argument, what was expected and what
came, so that a wrong call fails at the line that made it.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

PROFILES = ("fast", "book", "full")
"""Experiment sizes: ``fast`` (CI on a 2-core CPU), ``book`` (what the rendered book
shows, CPU-feasible), ``full`` (GPU scale, closer to the papers)."""


def check_choice(arg: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them."""
    if value not in choices:
        raise ValueError(f"unknown {arg} {value!r}; expected one of {', '.join(map(repr, choices))}")
    return value


def check_profile(profile: str) -> str:
    """Validate an experiment profile name (``fast``, ``book`` or ``full``)."""
    return check_choice("profile", profile, PROFILES)


def check_shape(arg: str, x: torch.Tensor | np.ndarray, expected: Sequence[int | str | None]) -> None:
    """Check that ``x`` has ``len(expected)`` dimensions matching ``expected``.

    Entries of ``expected`` are ints (that exact size), ``None`` (any size) or strings
    (symbolic sizes such as ``"B"``; the same symbol must have the same size everywhere
    in this call). Raises ``ValueError`` naming ``arg``, the expected and the actual shape.
    """
    shape = tuple(x.shape)
    shown = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
    if len(shape) != len(expected):
        raise ValueError(f"{arg}: expected shape {shown}, got {shape}")
    seen: dict[str, int] = {}
    for size, want in zip(shape, expected):
        if want is None:
            continue
        if isinstance(want, str):
            if seen.setdefault(want, size) != size:
                raise ValueError(f"{arg}: expected shape {shown} with equal '{want}' sizes, got {shape}")
        elif size != want:
            raise ValueError(f"{arg}: expected shape {shown}, got {shape}")


def check_same_shape(**arrays: torch.Tensor | np.ndarray) -> None:
    """Raise ``ValueError`` unless every keyword argument has the same shape."""
    shapes = {name: tuple(a.shape) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{n} {s}" for n, s in shapes.items())
        raise ValueError(f"expected arrays of equal shape, got {desc}")


def as_number(arg: str, value: Any) -> int | float:
    """``value`` as a plain number, accepting NumPy and torch scalars; ``TypeError`` naming ``arg`` otherwise.

    Accepted: Python ``int``/``float`` (returned as they are, so ``np.float64``, a ``float``
    subclass, stays itself), NumPy scalars (``np.float32(0.1)``, ``np.int64(2)``), 0-d NumPy
    arrays and 0-d torch tensors of an integer or floating dtype (returned as ``.item()``: a
    Python ``int`` or ``float`` with the scalar's exact value). Refused: booleans (``True``,
    ``np.bool_``, bool arrays), complex numbers, arrays with more than one element and
    anything else. The value is not range-checked (NaN passes).
    """
    zero_d = isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0
    if isinstance(value, (bool, np.bool_)) or (zero_d and value.dtype in (np.bool_, torch.bool)):
        raise TypeError(f"{arg}: expected a number, got bool {value!r}")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        return value.item()
    if isinstance(value, torch.Tensor) and value.ndim == 0 and value.dtype != torch.bool \
            and not value.is_complex():
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        what = f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    else:
        what = f"{type(value).__name__} {value!r}"
    raise TypeError(f"{arg}: expected a number (int, float, or a NumPy/torch integer or floating scalar), got {what}")


def check_positive(arg: str, value: float, *, allow_zero: bool = False) -> float:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0 (or >= 0)."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = is_number and np.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{arg}: expected a finite number {bound}, got {value!r}")
    return value


def check_positive_number(arg: str, value: Any, *, allow_zero: bool = False) -> int | float:
    """:func:`check_positive` that also accepts NumPy and torch scalars (see :func:`as_number`).

    Returns the value as a plain number (Python numbers unchanged); raises ``ValueError``
    naming ``arg`` unless it is a finite number > 0 (or >= 0). Booleans are refused.
    """
    try:
        number = as_number(arg, value)
    except TypeError:
        number = None
    try:
        finite = number is not None and math.isfinite(number)
    except OverflowError:  # a Python int beyond the float range
        finite = False
    ok = finite and (number >= 0 if allow_zero else number > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        shown = f"{type(value).__name__} {value!r}" if not isinstance(value, (int, float)) else repr(value)
        raise ValueError(f"{arg}: expected a finite number {bound} (a Python, NumPy or torch scalar), got {shown}")
    return number


DEVICE_FORMS = "'auto', 'cpu', 'cuda' or 'cuda:N' (N a CUDA device index), or a torch.device of type cpu or cuda"
"""What :func:`resolve_device` accepts, as its error messages spell it."""

_CUDA_INDEX = re.compile(r"cuda:(0|[1-9][0-9]*)")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` into CUDA when available, else CPU; validate anything else.

    Accepted: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` with ``0 <= N <
    torch.cuda.device_count()``, and ``torch.device`` objects of those kinds. Anything else
    (``"meta"``, ``"mps"``, ``"cpu:3"``, ``"cuda:-1"``, ``" cuda"``, an int...) raises
    ``ValueError`` (``TypeError`` for a value that is neither a str nor a ``torch.device``)
    here, before any work is done on it.

    This is the only place where poselab chooses a device: code elsewhere moves
    tensors with ``.to(device)``, never ``.cuda()``.
    """
    if isinstance(device, torch.device):
        kind, index = device.type, device.index
    elif isinstance(device, str):
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        match = _CUDA_INDEX.fullmatch(device)
        if device in ("cpu", "cuda"):
            kind, index = device, None
        elif match:
            kind, index = "cuda", int(match.group(1))
        else:
            raise ValueError(f"device: expected {DEVICE_FORMS}; got {device!r}")
    else:
        hint = f"; for CUDA device {device} pass 'cuda:{device}'" if type(device) is int and device >= 0 else ""
        raise TypeError(f"device: expected {DEVICE_FORMS}; got {type(device).__name__} {device!r}{hint}")
    if kind == "cpu" and index is None:
        return torch.device("cpu")
    if kind != "cuda":
        raise ValueError(f"device: expected {DEVICE_FORMS}; got torch.device({str(device)!r})")
    if not torch.cuda.is_available():
        raise ValueError(f"device: {str(device)!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
    if index is not None:
        count = torch.cuda.device_count()
        if index >= count:
            raise ValueError(f"device: {str(device)!r} asks for CUDA device {index} but this machine has {count} "
                             f"(cuda:0 to cuda:{count - 1}); use 'cuda' or an index below {count}")
        return torch.device("cuda", index)
    return torch.device("cuda")


SEED_LIMIT = 2**32
"""Seeds are ints in ``[0, SEED_LIMIT)``: the range every generator seeded by
:func:`seed_everything` (Python, NumPy, torch) takes without folding two seeds into one."""


def check_seed(seed: Any, arg: str = "seed", *, headroom: int = 0) -> int:
    """``seed`` if it is an int (not a bool) in ``[0, SEED_LIMIT - headroom)``.

    ``headroom`` leaves room for the seeds a caller derives: with ``headroom=2``,
    ``seed + 1`` and ``seed + 2`` are valid seeds too. Raises ``TypeError`` for a non-int,
    ``ValueError`` naming ``arg`` and the range otherwise.
    """
    top = SEED_LIMIT - 1 - headroom
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"{arg}: expected an int from 0 to {top}, got {type(seed).__name__} {seed!r}")
    if not 0 <= seed <= top:
        why = f" (seeds derived from it, up to {arg} + {headroom}, must stay below 2**32)" if headroom else ""
        raise ValueError(f"{arg}: expected an int from 0 to {top}{why}, got {int(seed)}; "
                         f"pick a seed in that range, e.g. 0")
    return int(seed)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) and return a CPU ``torch.Generator``.

    ``seed`` is an int in ``[0, 2**32)`` (:func:`check_seed`). CPU results are bitwise
    reproducible for the same seed *and the same thread count*.
    """
    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def check_int(arg: str, value, minimum: int = 1) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``; ``TypeError``/``ValueError`` naming ``arg`` otherwise."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{arg}: expected an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{arg}: expected an int >= {minimum}, got {value}")
    return value


def check_like_model(arg: str, x: torch.Tensor, like: torch.Tensor, name: str = "x") -> None:
    """Raise unless tensor ``x`` has the dtype and device of ``like`` (a model's parameter).

    ``name`` is how the fix is spelled in the message (``x.to(...)``).
    """
    if x.dtype != like.dtype:
        raise TypeError(
            f"{arg}: dtype {x.dtype} does not match the model's {like.dtype}; "
            f"convert the input ({name}.to({like.dtype})) or the model (model.to({x.dtype}))"
        )
    if x.device != like.device:
        raise ValueError(f"{arg}: on device {x.device} but the model is on {like.device}; move one of them")


def check_float_tensor(arg: str, x: Any, shape: Sequence[int | str | None] | None = None) -> torch.Tensor:
    """``x`` if it is a floating-point ``torch.Tensor`` (of ``shape``, as :func:`check_shape` reads it);
    ``TypeError`` (``ValueError`` for the shape) naming ``arg`` otherwise."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{arg}: expected a torch.Tensor (floating point), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{arg}: expected a floating-point tensor, got dtype {x.dtype}")
    if shape is not None:
        check_shape(arg, x, shape)
    return x


def check_size_pair(arg: str, size: Any) -> tuple[int, int]:
    """``(H, W)`` if ``size`` is a pair (tuple, list or ``torch.Size``) of ints >= 1, else an error naming ``arg``."""
    if not isinstance(size, (tuple, list, torch.Size)) or len(size) != 2:
        raise ValueError(f"{arg}: expected (H, W), a pair of ints >= 1, got {size!r}")
    return check_int(f"{arg}[0]", size[0], 1), check_int(f"{arg}[1]", size[1], 1)


def check_generator(generator: Any, arg: str = "generator", *, cpu: bool = False) -> torch.Generator | None:
    """``generator`` if it is ``None`` or a ``torch.Generator`` (on the CPU, with ``cpu``); ``TypeError`` otherwise."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{arg}: expected a torch.Generator or None, got {type(generator).__name__}")
    if cpu and generator is not None and generator.device.type != "cpu":
        raise ValueError(f"{arg}: expected a CPU generator (draws are made on the CPU), got one on {generator.device}")
    return generator


def check_probability(arg: str, value: Any) -> float:
    """``value`` as a float if it is a number in ``[0, 1)`` (a dropout rate), else ``ValueError`` naming ``arg``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{arg}: expected a probability in [0, 1), got {value!r}")
    return float(value)
