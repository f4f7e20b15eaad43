"""Argument checking shared by every public function, and device/seed helpers.

Every check raises an error that names the argument, what was expected and what
came, so that a wrong call fails at the line that made it.
"""

from __future__ import annotations

import random
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


def check_positive(arg: str, value: float, *, allow_zero: bool = False) -> float:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0 (or >= 0)."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = is_number and np.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{arg}: expected a finite number {bound}, got {value!r}")
    return value


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` into CUDA when available, else CPU; validate anything else.

    This is the only place where poselab chooses a device: code elsewhere moves
    tensors with ``.to(device)``, never ``.cuda()``.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) and return a CPU ``torch.Generator``.

    CPU results are bitwise reproducible for the same seed *and the same thread count*.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__} {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
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
