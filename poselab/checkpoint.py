"""Training checkpoints as safetensors files: any nested state, written atomically, never unpickled.

A checkpoint is a nested state made of dicts, lists, tuples, tensors, NumPy arrays and plain
values (module and optimiser ``state_dict``s, RNG states, a history). :func:`pack` splits it into
a table of tensors and a JSON skeleton that points into the table, so that the whole state is
one :mod:`poselab.tensorfile` file: tensors bit-exact, floats exact (JSON keeps every digit of a
Python float), dict keys of any plain type and tuples restored as they were.

:func:`save_state` / :func:`load_state` write and read such a file with a ``format`` string and
a **fingerprint** (everything a run must share with the one that wrote the checkpoint to
continue it); :func:`check_fingerprint` names every setting that differs and how to start over.
"""

from __future__ import annotations

import os
import random
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from poselab.tensorfile import load_tensor_file, save_tensor_file, tensor_sha256

__all__ = ["START_OVER", "pack", "unpack", "save_state", "load_state", "read_state", "check_fingerprint",
           "rng_state", "set_rng_state", "config_differences", "module_fingerprint", "describe_callable",
           "data_sha256", "module_state_sha256", "check_checkpoint_path"]

START_OVER = ("start over with resume=False (on the command line: --fresh), "
              "or use another checkpoint folder")
"""How a user recovers from a checkpoint that cannot be continued (named in every such error)."""

_TENSOR, _ARRAY, _TUPLE, _MAP = "__tensor__", "__ndarray__", "__tuple__", "__map__"


def pack(state: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """``(tensors, skeleton)``: every tensor of ``state`` under a name, and a JSON-serialisable copy
    of ``state`` that refers to them. Dicts with keys other than str, tuples and NumPy arrays are
    encoded so that :func:`unpack` restores them exactly; NumPy scalars come back as the Python
    number of the same value. Raises ``TypeError`` for anything else."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if path in tensors:  # e.g. a key "a/b" beside a nested {"a": {"b": ...}}
            raise ValueError(f"checkpoint state: two values would be stored as {path!r}; rename one of them")
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach()
            return {_TENSOR: path}
        if isinstance(value, np.ndarray):
            array = np.ascontiguousarray(value).reshape(value.shape)  # ascontiguousarray makes 0-d arrays 1-d
            tensors[path] = torch.from_numpy(array.astype(np.int64) if value.dtype == np.uint32 else array)
            return {_ARRAY: path, "dtype": str(value.dtype)}
        if isinstance(value, (bool, int, float, str, type(None))):
            return value
        if isinstance(value, (np.integer, np.floating, np.bool_)):
            return value.item()
        if isinstance(value, tuple):
            return {_TUPLE: [walk(v, f"{path}/{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return {k: walk(v, f"{path}/{k}") for k, v in value.items()}
            return {_MAP: [[walk(k, f"{path}/key{i}"), walk(v, f"{path}/{i}")] for i, (k, v) in enumerate(value.items())]}
        raise TypeError(f"checkpoint state: cannot store {type(value).__name__} at {path or '/'}; "
                        f"expected tensors, arrays, dicts, lists, tuples and plain values")

    return tensors, walk(state, "")


def unpack(tensors: Mapping[str, torch.Tensor], skeleton: Any) -> Any:
    """Inverse of :func:`pack`."""
    def walk(value: Any) -> Any:
        if isinstance(value, list):
            return [walk(v) for v in value]
        if not isinstance(value, dict):
            return value
        if _TENSOR in value:
            return tensors[value[_TENSOR]]
        if _ARRAY in value:
            return tensors[value[_ARRAY]].numpy().astype(np.dtype(value["dtype"]))
        if _TUPLE in value:
            return tuple(walk(v) for v in value[_TUPLE])
        if _MAP in value:
            return {walk(k): walk(v) for k, v in value[_MAP]}
        return {k: walk(v) for k, v in value.items()}

    return walk(skeleton)


def config_differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """``"key: old in the checkpoint vs new now"`` for every leaf where two fingerprints differ
    (nested dicts, and lists of dicts or lists, are compared item by item, so a message names
    the one setting that changed)."""
    def short(value: Any) -> str:
        if isinstance(value, str) and len(value) > 24:
            return repr(value[:16] + "...")  # e.g. a SHA-256
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        out = []
        for key in sorted(set(saved) | set(current), key=str):
            name = f"{prefix}/{key}" if prefix else str(key)
            if key not in saved or key not in current:
                out.append(f"{name}: {short(saved.get(key, '<absent>'))} in the checkpoint vs "
                           f"{short(current.get(key, '<absent>'))} now")
            else:
                out.extend(config_differences(saved[key], current[key], name))
        return out
    if (isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current)
            and any(isinstance(v, (Mapping, list)) for v in saved + current)):  # e.g. one fingerprint per network
        return [d for i, (a, b) in enumerate(zip(saved, current))
                for d in config_differences(a, b, f"{prefix}/{i}" if prefix else str(i))]
    if saved != current:
        return [f"{prefix or 'value'}: {short(saved)} in the checkpoint vs {short(current)} now"]
    return []


def check_fingerprint(path: Path, saved: Any, current: Any) -> None:
    """``ValueError`` naming up to 8 differing settings when a checkpoint's fingerprint is not this run's."""
    diffs = config_differences(saved, current)
    diffs.sort(key=lambda d: "/model/" in d or d.startswith("model"))  # summary keys first, module details after
    if diffs:
        shown = diffs[:8] + ([f"and {len(diffs) - 8} more"] if len(diffs) > 8 else [])
        raise ValueError(f"checkpoint {str(path)!r} was written by an incompatible training configuration ("
                         + "; ".join(shown) + f"). To continue, {START_OVER}.")


def save_state(path: str | os.PathLike, state: Mapping[str, Any], fingerprint: Any, *, format: str) -> None:
    """Write ``state`` (see :func:`pack`) and its run's ``fingerprint`` to ``path`` atomically."""
    tensors, skeleton = pack(dict(state))
    save_tensor_file(path, tensors, {"fingerprint": fingerprint, "state": skeleton}, format=format)


def load_state(path: str | os.PathLike, fingerprint: Any, *, format: str) -> dict[str, Any]:
    """The state saved at ``path`` by :func:`save_state`, after checking it was written by a run with
    this ``fingerprint`` (``ValueError`` otherwise, naming the settings and how to start over).
    Nothing in the file is executed."""
    tensors, meta = load_tensor_file(path, format=format, what="checkpoint", recover=f"delete it, or {START_OVER}")
    check_fingerprint(Path(path), meta.get("fingerprint"), fingerprint)
    return unpack(tensors, meta["state"])


def read_state(path: str | os.PathLike, *, format: str) -> tuple[dict[str, Any], Any]:
    """``(state, fingerprint)`` of a file written by :func:`save_state`, without checking the
    fingerprint (to inspect a checkpoint)."""
    tensors, meta = load_tensor_file(path, format=format, what="checkpoint", recover=f"delete it, or {START_OVER}")
    return unpack(tensors, meta["state"]), meta.get("fingerprint")


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global random states a training step may draw from: torch (CPU and the CUDA device), NumPy, Python."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


# ------------------------------------------------------------------------------ fingerprints


def _callable_name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", type(fn).__qualname__)


_PLAIN_SCALARS = (bool, int, float, str, type(None))
_SKIP = object()


def _plain(value: Any) -> Any:
    """``value`` as plain JSON-like data (tuples become lists, non-finite floats strings), or
    ``_SKIP`` when it is not made of plain values."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # NaN != NaN would make a fingerprint differ from itself
    if isinstance(value, _PLAIN_SCALARS):
        return value
    if isinstance(value, (tuple, list)):
        items = [_plain(v) for v in value]
        return _SKIP if any(v is _SKIP for v in items) else items
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        items = {k: _plain(v) for k, v in value.items()}
        return _SKIP if any(v is _SKIP for v in items.values()) else items
    return _SKIP


def describe_callable(fn: Callable) -> dict:
    """What a checkpoint fingerprint records of a loss / eval / step function: its module and
    qualified name, and the plain values that configure it (``functools.partial`` arguments,
    default arguments, closure variables, plain attributes of a callable object)."""
    import functools

    out: dict[str, Any] = {"name": f"{getattr(fn, '__module__', None) or type(fn).__module__}.{_callable_name(fn)}"}
    if isinstance(fn, functools.partial):
        out["partial_of"] = describe_callable(fn.func)
        out["args"] = [v if v is not _SKIP else "<object>" for v in map(_plain, fn.args)]
        out["keywords"] = {k: v if v is not _SKIP else "<object>" for k, v in
                           ((k, _plain(v)) for k, v in sorted(fn.keywords.items()))}
        return out
    settings = {}
    code = getattr(fn, "__code__", None)
    if code is not None:
        defaults = getattr(fn, "__defaults__", None) or ()
        positional = code.co_varnames[:code.co_argcount]
        settings.update(zip(positional[len(positional) - len(defaults):], defaults))
        settings.update(getattr(fn, "__kwdefaults__", None) or {})
        for name, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or ()):
            try:
                settings[name] = cell.cell_contents
            except ValueError:  # an empty cell
                pass
    elif not isinstance(fn, nn.Module) and hasattr(fn, "__dict__"):
        settings.update({k: v for k, v in vars(fn).items() if not k.startswith("_")})
    plain = {k: _plain(v) for k, v in sorted(settings.items())}
    plain = {k: v for k, v in plain.items() if v is not _SKIP}
    if plain:
        out["settings"] = plain
    return out


def module_fingerprint(model: nn.Module) -> dict[str, Any]:
    """The configuration of ``model`` as ``{setting: value}``: for every submodule, its class and
    every plain attribute (``Dropout.p``, ``BatchNorm.eps`` and ``momentum``, layer sizes, a
    model's own options such as ``num_joints`` or ``alpha``), the names of functions it stores (an
    activation), the dtype, shape and trainability of every parameter, and the SHA-256 of
    the constant buffers that its ``state_dict`` does not hold (e.g. a graph's adjacency).

    Two models built with the same arguments have equal fingerprints; one option changed, even one
    that leaves every parameter shape alone (a dropout rate), makes them differ. Weights and
    running statistics are not part of it (a checkpoint restores those).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"module_fingerprint: expected a torch.nn.Module, got {type(model).__name__}")
    out: dict[str, Any] = {}
    for path, module in model.named_modules():
        prefix = path or "<model>"
        out[f"{prefix}:class"] = f"{type(module).__module__}.{type(module).__qualname__}"
        for key, value in sorted(vars(module).items()):
            if key.startswith("_") or key == "training":
                continue
            plain = _plain(value)
            if plain is not _SKIP:
                out[f"{prefix}.{key}"] = plain
            elif callable(value) and not isinstance(value, (nn.Module, torch.Tensor)):
                out[f"{prefix}.{key}"] = describe_callable(value)["name"]
    for name, p in model.named_parameters():
        out[f"{name}:parameter"] = [list(p.shape), str(p.dtype), bool(p.requires_grad)]
    stored = set(model.state_dict())
    for name, buf in model.named_buffers():
        if name not in stored:
            out[f"{name}:constant"] = tensor_sha256(buf)
    return out


def module_state_sha256(module: nn.Module) -> str:
    """One SHA-256 of every tensor of ``module.state_dict()``, names included (its starting weights)."""
    import hashlib

    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        digest.update(f"{name}={tensor_sha256(value)};".encode())
    return digest.hexdigest()


def data_sha256(**tensors: torch.Tensor) -> dict[str, str]:
    """``{name: SHA-256}`` of every byte of each tensor (:func:`~poselab.tensorfile.tensor_sha256`)."""
    return {name: tensor_sha256(t) for name, t in tensors.items()}


def check_checkpoint_path(arg: str, path: Any) -> Path:
    """``path`` as a ``Path`` where a checkpoint file can be written, else a clear error.

    Refused up front: a path that is an existing folder, and a path below an existing *file*
    (e.g. a checkpoint folder that is a regular file). Nothing is created.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{arg}: expected a str or path, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{arg}: {str(path)!r} is a folder; expected the path of a checkpoint file inside it "
                         f"(e.g. {str(path / 'run.pt')!r})")
    for parent in path.parents:  # nearest first; the first that exists must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(
                    f"{arg}: {str(path)!r} cannot be written because {str(parent)!r} is a file, not a folder; "
                    f"give a checkpoint folder that is a directory or does not exist yet "
                    f"(on the command line: --checkpoint-dir)")
            break
    return path
