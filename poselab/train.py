"""The training loop shared by every chapter: Adam, per-epoch lr decay, progress bar,
seeding, device handling, per-epoch evaluation and a checkpoint after every epoch.

Batches are drawn by indexing tensors that already live on the device with a
per-epoch permutation from a ``torch.Generator`` seeded from ``(seed, epoch)``: no
DataLoader workers, and the batch order of epoch ``e`` does not depend on how many
epochs ran before it in this process, which is what makes resuming exact.

A run interrupted at any point (Ctrl-C, a notebook kernel restart, a Colab
disconnect) loses at most the epoch in progress: call ``train_model`` again with the
same arguments and the same ``checkpoint_path`` and it continues from the last
completed epoch. On the same device and thread count the resumed run is bitwise
identical to an uninterrupted one (weights, optimiser state, RNG state are restored).

Checkpoint format (one ``torch.save`` file, written atomically after every epoch)::

    {"format": "poselab.train/2",
     "epoch": int,                 # completed epochs (1-based count)
     "config": dict,               # fingerprint of the run, see _fingerprint: every
                                   # hyper-parameter, the model's configuration and the
                                   # SHA-256 of the training and evaluation data
     "model": model.state_dict(),
     "optimizer": Adam state_dict, "scheduler": ExponentialLR state_dict,
     "history": History.to_dict(),
     "rng": {"torch": ByteTensor, "cuda": ByteTensor | None,
             "numpy": tuple, "python": tuple}}

It holds only tensors and plain Python values, so it loads with ``weights_only=True``: a file
that holds anything else (a crafted pickle included) is refused without running any of it.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from poselab.checks import check_int, check_positive, resolve_device, seed_everything
from poselab.tensorfile import tensor_sha256

__all__ = ["History", "train_model", "evaluate", "mpjpe_loss", "mpjpe_mm_eval", "load_checkpoint", "log_points",
           "append_window_record", "module_fingerprint", "describe_callable", "config_differences",
           "check_checkpoint_path"]

CHECKPOINT_FORMAT = "poselab.train/2"

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
EvalFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], Mapping[str, float]]
Callback = Callable[[int, "History", nn.Module], Any]
StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.optim.Optimizer], torch.Tensor]
ParamGroupsFn = Callable[[nn.Module], Sequence[Mapping[str, Any]]]


# --------------------------------------------------------------------------- history


@dataclass
class History:
    """Per-epoch training records.

    ``records[i]`` describes epoch ``i + 1`` with keys ``epoch`` (1-based int),
    ``train_loss`` (mean loss over the epoch's samples), ``lr`` (the learning rate used
    in that epoch), ``seconds`` (wall time of training + evaluation) and one
    ``"{set}/{metric}"`` float per evaluation set and metric, e.g. ``"test_in/mpjpe_mm"``.
    """

    records: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def last(self) -> dict:
        """The record of the last completed epoch (``ValueError`` if there is none)."""
        if not self.records:
            raise ValueError("History.last: the history is empty (no epoch has completed)")
        return self.records[-1]

    def column(self, key: str) -> list:
        """Values of ``key`` over epochs, e.g. ``history.column("train_loss")``.

        Raises ``KeyError`` listing the available keys if some record lacks ``key``.
        """
        missing = [r.get("epoch", i + 1) for i, r in enumerate(self.records) if key not in r]
        if missing:
            keys = sorted({k for r in self.records for k in r})
            raise KeyError(f"History.column: key {key!r} missing in epoch(s) {missing}; available keys: {keys}")
        return [r[key] for r in self.records]

    def to_dict(self) -> dict:
        """A JSON-serialisable copy: ``{"records": [dict, ...]}``."""
        return {"records": [dict(r) for r in self.records]}

    @classmethod
    def from_dict(cls, data: Mapping) -> History:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, Mapping) or not isinstance(data.get("records"), list):
            raise ValueError(f"History.from_dict: expected a mapping with a 'records' list, got {type(data).__name__}")
        for i, r in enumerate(data["records"]):
            if not isinstance(r, Mapping):
                raise ValueError(f"History.from_dict: record {i} should be a dict, got {type(r).__name__}")
        return cls(records=[dict(r) for r in data["records"]])


# ------------------------------------------------------------------- step-based records


def log_points(iterations: int, log_every: int) -> list[int]:
    """Steps (1-based counts) after which a step-based loop appends a record: every ``log_every``
    steps and after the last one, e.g. ``log_points(7, 3) == [3, 6, 7]``."""
    check_int("iterations", iterations)
    check_int("log_every", log_every)
    return sorted({*range(log_every, iterations + 1, log_every), iterations})


def append_window_record(history: History, window: Sequence[Mapping[str, float]], point: int, lr: float,
                         points: Sequence[int], evaluate: Callable[[dict], None], eval_keys: Sequence[str],
                         diverged: bool, extra: Mapping[str, float] | None = None) -> dict:
    """Close a window of steps of a step-based loop (HamiPose, mesh meta-training): append its record.

    The record is ``{"iteration": point, "lr": lr}``, the mean over the window of each of its steps'
    values (NaN propagates), ``extra`` (values the caller computed for the window), then either the
    evaluations (``evaluate(record)`` adds them) or, when the run ``diverged``, ``eval_keys`` set to
    NaN (a non-finite network has no meaningful prediction), and ``diverged`` (1.0 or 0.0). After a
    divergence, one record per remaining log point in ``points`` follows, every value NaN but
    ``iteration`` and ``diverged``: a diverged run keeps the record layout of one that did not.

    Args:
        history: the run's :class:`History` (records are appended).
        window: the steps' values since the previous record (at least one step).
        point: the log point of this record (``iteration``).
        lr: the learning rate of the window's last step.
        points: every log point of the run (:func:`log_points`).
        evaluate: adds evaluations to a record in place.
        eval_keys: the keys ``evaluate`` adds (set to NaN on divergence).
        diverged: the run diverged in this window.
        extra: more per-window values, placed after the means.

    Returns:
        The record of the window.
    """
    if not window:
        raise ValueError("window: expected the values of at least one step, got none")
    record: dict = {"iteration": point, "lr": lr}
    for key in window[0]:
        record[key] = float(sum(w[key] for w in window) / len(window))
    record.update(extra or {})
    if diverged:
        record.update(dict.fromkeys(eval_keys, math.nan))
    else:
        evaluate(record)
    record["diverged"] = float(diverged)
    history.records.append(record)
    if diverged:
        for later in (p for p in points if p > point):
            history.records.append({**dict.fromkeys(record, math.nan), "iteration": later, "diverged": 1.0})
    return record


# ------------------------------------------------------------------ losses and metrics


def mpjpe_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Default training loss: MPJPE, the mean Euclidean distance over joints and samples.

    ``model(inputs)`` and ``targets`` are ``(B, J, 3)`` (any trailing coordinate size
    works: the norm is over the last dimension), in the targets' unit (metres).
    Returns a scalar tensor.
    """
    pred = model(inputs)
    if pred.shape != targets.shape:
        raise ValueError(f"model output: expected the targets' shape {tuple(targets.shape)}, got {tuple(pred.shape)}")
    return (pred - targets).norm(dim=-1).mean()


@torch.no_grad()
def mpjpe_mm_eval(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Default evaluation: ``{"mpjpe_mm": MPJPE in millimetres}`` (targets in metres)."""
    return {"mpjpe_mm": 1000.0 * mpjpe_loss(model, inputs, targets).item()}


# ------------------------------------------------------------------------ validation


def _as_tensors(arg: str, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of a dataset with ``.inputs``/``.targets`` or of a 2-tuple."""
    if isinstance(dataset, (tuple, list)):
        if len(dataset) != 2:
            raise TypeError(f"{arg}: expected an (inputs, targets) pair, got a sequence of length {len(dataset)}")
        inputs, targets = dataset
    elif hasattr(dataset, "inputs") and hasattr(dataset, "targets"):
        inputs, targets = dataset.inputs, dataset.targets
    else:
        raise TypeError(
            f"{arg}: expected a dataset with tensor attributes .inputs and .targets, or an (inputs, targets) "
            f"tuple, got {type(dataset).__name__}"
        )
    for name, t in (("inputs", inputs), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{arg}: {name} should be a torch.Tensor, got {type(t).__name__}")
        if t.ndim == 0:
            raise ValueError(f"{arg}: {name} should have a first (sample) dimension, got a 0-d tensor")
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"{arg}: inputs and targets must have the same number of samples N (first dimension), "
            f"got inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)}"
        )
    if inputs.shape[0] == 0:
        raise ValueError(f"{arg}: the dataset is empty (N = 0)")
    return inputs, targets


def _check_number(arg: str, value: Any, *, allow_zero: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{arg}: expected a finite number, got {type(value).__name__} {value!r}")
    return check_positive(arg, value, allow_zero=allow_zero)


def _check_callable(arg: str, fn: Any) -> None:
    if not callable(fn):
        raise TypeError(f"{arg}: expected a callable (model, inputs, targets) -> ..., got {type(fn).__name__}")


def _callable_name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", type(fn).__qualname__)


# ------------------------------------------------------------------------ evaluation


@torch.no_grad()
def _evaluate_tensors(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, eval_fn: EvalFn, batch_size: int | None
) -> dict[str, float]:
    """Sample-weighted mean of ``eval_fn`` over batches; model in eval mode, mode restored."""
    was_training = model.training
    model.eval()
    try:
        n = inputs.shape[0]
        step = n if batch_size is None else batch_size
        sums: dict[str, float] = {}
        for start in range(0, n, step):
            stop = min(start + step, n)
            out = eval_fn(model, inputs[start:stop], targets[start:stop])
            if not isinstance(out, Mapping):
                raise TypeError(f"eval_fn: expected it to return a dict of floats, got {type(out).__name__}")
            if start > 0 and set(out) != set(sums):
                raise ValueError(f"eval_fn: returned keys {sorted(out)} for one batch and {sorted(sums)} for another")
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + float(value) * (stop - start)
        return {key: total / n for key, total in sums.items()}
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module,
    dataset: Any,
    eval_fn: EvalFn | None = None,
    batch_size: int | None = 1024,
    device: str | torch.device = "auto",
) -> dict[str, float]:
    """Evaluate ``model`` on ``dataset`` without gradients, in eval mode.

    ``dataset`` has tensor attributes ``.inputs`` / ``.targets`` (first dim N) or is an
    ``(inputs, targets)`` tuple. ``eval_fn(model, inputs, targets) -> dict[str, float]``
    is called on batches of ``batch_size`` samples and the results are averaged with
    weights proportional to the batch sizes, so its metrics must be *means over
    samples* (true for MPJPE and PCK; not for a median or an AUC — pass
    ``batch_size=None`` to call ``eval_fn`` once on the whole set for those).
    Default ``eval_fn``: :func:`mpjpe_mm_eval` (``{"mpjpe_mm": ...}``, targets in metres).
    The model is moved to ``device``; its train/eval mode is restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    inputs, targets = _as_tensors("dataset", dataset)
    eval_fn = mpjpe_mm_eval if eval_fn is None else eval_fn
    _check_callable("eval_fn", eval_fn)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    dev = resolve_device(device)
    model.to(dev)
    return _evaluate_tensors(model, inputs.to(dev), targets.to(dev), eval_fn, batch_size)


# ----------------------------------------------------------------------- checkpoints


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


def _data_hashes(inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, str]:
    return {"inputs": tensor_sha256(inputs), "targets": tensor_sha256(targets)}


def _fingerprint(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, eval_data: Mapping[str, tuple], **hyper: Any
) -> dict:
    """Everything that must match for a checkpoint to be continued by this call: every
    hyper-parameter of ``train_model``, the model's full configuration
    (:func:`module_fingerprint`), and the SHA-256 of every byte of the training data and of
    each evaluation set, inputs and targets.

    The device is deliberately absent (a run may move from GPU to CPU after a disconnect).
    """
    return {
        **hyper,
        "num_samples": inputs.shape[0],
        "input_shape": list(inputs.shape[1:]),
        "target_shape": list(targets.shape[1:]),
        "data_sha256": {"train": _data_hashes(inputs, targets),
                        **{f"eval/{name}": _data_hashes(x, y) for name, (x, y) in sorted(eval_data.items())}},
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": {name: list(p.shape) for name, p in model.named_parameters()},
        "model": module_fingerprint(model),
        "eval_sets": sorted(eval_data),
    }


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


START_OVER = ("start over with resume=False (on the command line: --fresh), "
              "or use another checkpoint folder")
"""How a user recovers from a checkpoint that cannot be continued (named in every such error)."""


def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        # NumPy's key array becomes a list so the file loads with weights_only=True
        "numpy": (np_state[0], [int(k) for k in np_state[1]], *np_state[2:]),
        "python": random.getstate(),
    }


def _set_rng_state(state: Mapping, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _save_atomic(obj: dict, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then ``os.replace``: a reader
    (or a crash) sees either the previous checkpoint or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`train_model` (CPU tensors; see the module doc)."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:  # weights_only refuses a pickle of any other object, unread
        raise ValueError(f"checkpoint {str(path)!r}: could not be read as a poselab.train checkpoint (it holds "
                         f"objects other than tensors and plain values, which poselab never loads: loading them "
                         f"could run code); delete it, or {START_OVER}") from exc
    except Exception as exc:  # corrupted, truncated or foreign file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]
        raise ValueError(f"checkpoint {str(path)!r}: could not be read as a poselab.train checkpoint (damaged, "
                         f"truncated or not a checkpoint: {reason}); delete it, or {START_OVER}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"checkpoint {str(path)!r}: expected format {CHECKPOINT_FORMAT!r}, found {found!r}; "
                         f"delete it, or {START_OVER}")
    return ckpt


def _check_compatible(path: Path, saved: Mapping, current: Mapping) -> None:
    diffs = config_differences(saved, current)
    diffs.sort(key=lambda d: d.startswith("model/"))  # the short summary keys first, module details after
    if diffs:
        shown = diffs[:8] + ([f"and {len(diffs) - 8} more"] if len(diffs) > 8 else [])
        raise ValueError(
            f"checkpoint {str(path)!r} was written by an incompatible training configuration ("
            + "; ".join(shown)
            + f"). To continue, {START_OVER}."
        )


# ---------------------------------------------------------------------- the training


def _check_scalar(arg: str, loss: Any) -> None:
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"{arg}: expected a scalar (0-d) tensor, got {got}")


def _param_groups(model: nn.Module, param_groups: ParamGroupsFn | None, params: list) -> list[dict]:
    """Adam parameter groups: ``param_groups(model)`` checked (every trainable parameter in
    exactly one group, options plain numbers), or one group of ``params``."""
    if param_groups is None:
        return [{"params": params}]
    groups = param_groups(model)
    if not isinstance(groups, Sequence) or not groups or not all(isinstance(g, Mapping) and "params" in g for g in groups):
        raise ValueError(f"param_groups: expected a non-empty list of dicts with a 'params' entry, got {groups!r}")
    out, seen = [], set()
    for i, g in enumerate(groups):
        members = list(g["params"])
        if not members or not all(isinstance(p, nn.Parameter) for p in members):
            raise ValueError(f"param_groups: group {i} must hold at least one parameter, and only parameters")
        for key, value in g.items():
            if key != "params" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise TypeError(f"param_groups: group {i} option {key!r} should be a number, got {value!r}")
        ids = {id(p) for p in members}
        if ids & seen:
            raise ValueError(f"param_groups: group {i} repeats parameters of an earlier group")
        seen |= ids
        out.append({**g, "params": members})
    missing = [p for p in params if id(p) not in seen]
    if missing or len(seen) != len(params):
        raise ValueError(f"param_groups: the groups must cover every trainable parameter of the model exactly once "
                         f"({len(seen)} grouped vs {len(params)} trainable)")
    return out


def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Permutation of ``range(n)`` for ``epoch``, a pure function of ``(seed, epoch)``.

    Drawn on the CPU so that the batch order is the same on every device.
    """
    mixed = np.random.SeedSequence((seed % 2**64, epoch)).generate_state(1, dtype=np.uint64)[0]
    gen = torch.Generator().manual_seed(int(mixed))
    return torch.randperm(n, generator=gen)


def train_model(
    model: nn.Module,
    train_set: Any,
    *,
    epochs: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    lr_decay: float = 0.96,
    max_grad_norm: float | None = None,
    loss_fn: LossFn | None = None,
    eval_sets: Mapping[str, Any] | None = None,
    eval_fn: EvalFn | None = None,
    eval_batch_size: int | None = 1024,
    device: str | torch.device = "auto",
    seed: int = 0,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    callbacks: Callback | Sequence[Callback] | None = None,
    step_fn: StepFn | None = None,
    param_groups: ParamGroupsFn | None = None,
) -> History:
    """Train ``model`` with Adam on ``train_set`` for ``epochs`` epochs and return its History.

    Args:
        model: any ``nn.Module``; moved to ``device`` in place and trained in place.
            Its initial weights are the caller's business: ``train_model`` seeds the
            RNGs only *after* the model exists, so for reproducible runs call
            ``seed_everything(seed)`` before building the model.
        train_set: an object with tensors ``.inputs`` and ``.targets`` (first dim N,
            e.g. a ``LiftingSet``), or an ``(inputs, targets)`` tuple of tensors.
        epochs: number of passes over ``train_set`` (int >= 1).
        batch_size: samples per step; the last batch of an epoch may be smaller (a last batch of
            one sample is skipped, since BatchNorm cannot train on it).
        lr, weight_decay: Adam's learning rate and (L2) weight decay.
        lr_decay: the lr is multiplied by this after every epoch (exponential decay,
            as in SimpleBaseline); ``1.0`` keeps it constant. In ``(0, 1]``.
        max_grad_norm: if given, clip the global gradient norm to it before each step.
        loss_fn: ``loss_fn(model, inputs, targets) -> scalar tensor``; by default
            :func:`mpjpe_loss` (mean per-joint Euclidean distance, in the targets' unit).
        eval_sets: ``{name: dataset}`` evaluated after every epoch with ``eval_fn``
            (see :func:`evaluate`); metric ``m`` of set ``name`` goes into the
            epoch's record as ``"name/m"``.
        eval_fn: ``eval_fn(model, inputs, targets) -> dict[str, float]``, run in eval
            mode without gradients on batches of ``eval_batch_size`` (None: one call);
            by default :func:`mpjpe_mm_eval` (``"mpjpe_mm"``).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        seed: seeds Python, NumPy and torch at the start (``seed_everything``) and the
            per-epoch batch permutations.
        checkpoint_path: if given, a checkpoint is written there (atomically) after
            every epoch. With ``resume=True`` an existing checkpoint is continued from its
            next epoch — it must come from the same configuration (every hyper-parameter
            including ``epochs`` and ``seed``, the model's full configuration, e.g. its
            dropout rates, see :func:`module_fingerprint`, and the SHA-256 of the training
            data and of every eval set), else ``ValueError``; if it already covers all epochs its
            weights are loaded into ``model`` and its history returned without training.
            With ``resume=False`` an existing checkpoint is ignored and overwritten. A path
            that is a folder, or lies below a regular file, is a ``ValueError`` up front.
        progress: show a ``tqdm`` bar over epochs (loss and first eval metric); nothing
            is printed when False.
        callbacks: callable(s) ``callback(epoch, history, model)`` run after each epoch
            once its checkpoint is on disk (``epoch`` is 1-based; ``history.last`` is its
            record). An exception raised there stops training; the run can be resumed.
        step_fn: replaces the default optimisation step (``loss_fn``, ``zero_grad``,
            ``backward``, ``step``) for methods that take several steps per batch, e.g.
            SEAL's loss-net step then task-net step. ``step_fn(model, inputs, targets,
            optimizer)`` does its own backward passes and ``optimizer.step()`` calls and
            returns the scalar loss to record (``train_loss``). ``loss_fn`` and
            ``max_grad_norm`` are then unused and must be left at their defaults.
        param_groups: ``param_groups(model) -> [{"params": [...], "lr": ...}, ...]``, Adam
            parameter groups with their own options (e.g. two networks with their own
            learning rates). Adam keeps its state per parameter, so a group stepped alone
            behaves exactly as a separate Adam optimiser would. Default: one group of all
            trainable parameters at ``lr``. ``lr_decay`` scales every group's lr.

    Returns:
        The :class:`History`, one record per epoch (including epochs from a resumed
        checkpoint). The model keeps the final weights and the train/eval mode it came in.

    Reproducibility: same arguments, same initial weights, same device and thread count
    give bitwise identical weights and history losses, with or without interruptions.
    """
    # ---- validate everything before touching the model or the disk
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    inputs, targets = _as_tensors("train_set", train_set)
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    _check_number("lr", lr)
    _check_number("weight_decay", weight_decay, allow_zero=True)
    _check_number("lr_decay", lr_decay)
    if lr_decay > 1:
        raise ValueError(f"lr_decay: expected a factor in (0, 1], got {lr_decay!r}")
    if max_grad_norm is not None:
        _check_number("max_grad_norm", max_grad_norm)
    loss_fn = mpjpe_loss if loss_fn is None else loss_fn
    eval_fn = mpjpe_mm_eval if eval_fn is None else eval_fn
    _check_callable("loss_fn", loss_fn)
    _check_callable("eval_fn", eval_fn)
    if eval_batch_size is not None:
        check_int("eval_batch_size", eval_batch_size, 1)
    eval_sets = {} if eval_sets is None else eval_sets
    if not isinstance(eval_sets, Mapping):
        raise TypeError(f"eval_sets: expected a dict {{name: dataset}}, got {type(eval_sets).__name__}")
    eval_data = {}
    for name, ds in eval_sets.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"eval_sets: names must be non-empty strings, got {name!r}")
        eval_data[name] = _as_tensors(f"eval_sets[{name!r}]", ds)
    if callbacks is None:
        callbacks = []
    elif callable(callbacks):
        callbacks = [callbacks]
    callbacks = list(callbacks)
    for i, cb in enumerate(callbacks):
        if not callable(cb):
            raise TypeError(f"callbacks[{i}]: expected a callable (epoch, history, model), got {type(cb).__name__}")
    if step_fn is not None:
        _check_callable("step_fn", step_fn)
        if loss_fn is not mpjpe_loss or max_grad_norm is not None:
            raise ValueError("step_fn: it replaces loss_fn and max_grad_norm; leave those at their defaults")
    if param_groups is not None:
        _check_callable("param_groups", param_groups)
    if not isinstance(resume, bool):
        raise TypeError(f"resume: expected a bool, got {type(resume).__name__}")
    ckpt_path = None if checkpoint_path is None else check_checkpoint_path("checkpoint_path", checkpoint_path)
    dev = resolve_device(device)
    seed_everything(seed)  # also validates seed (an int)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: has no trainable parameters (requires_grad=True)")
    groups = _param_groups(model, param_groups, params)

    config = None if ckpt_path is None else _fingerprint(
        model,
        inputs,
        targets,
        eval_data,
        epochs=epochs,
        batch_size=batch_size,
        lr=float(lr),
        weight_decay=float(weight_decay),
        lr_decay=float(lr_decay),
        max_grad_norm=None if max_grad_norm is None else float(max_grad_norm),
        seed=seed,
        loss_fn=describe_callable(loss_fn),
        eval_fn=describe_callable(eval_fn),
        eval_batch_size=eval_batch_size,
        step_fn=None if step_fn is None else describe_callable(step_fn),
        param_groups=[{k: v for k, v in g.items() if k != "params"} | {"size": len(g["params"])} for g in groups],
    )

    # ---- set up on the device
    was_training = model.training
    model.to(dev)
    inputs, targets = inputs.to(dev), targets.to(dev)
    eval_data = {name: (x.to(dev), y.to(dev)) for name, (x, y) in eval_data.items()}
    optimizer = torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=lr_decay)
    history = History()
    start_epoch = 0

    if ckpt_path is not None and resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        _check_compatible(ckpt_path, ckpt["config"], config)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history = History.from_dict(ckpt["history"])
        start_epoch = int(ckpt["epoch"])
        _set_rng_state(ckpt["rng"], dev)
        if start_epoch >= epochs:
            model.train(was_training)
            return history

    # ---- the loop
    n = inputs.shape[0]
    # A trailing batch of one sample is skipped (that sample is in another batch next epoch):
    # BatchNorm cannot compute batch statistics from a single sample.
    n_used = n - 1 if n > 1 and n % batch_size == 1 else n
    model.train()
    bar = _progress_bar(epochs, start_epoch, progress)
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            t0 = time.perf_counter()
            epoch_lr = optimizer.param_groups[0]["lr"]
            perm = _epoch_permutation(n, seed, epoch).to(dev)
            # accumulate on the device: one host sync per epoch, not per step
            total = torch.zeros((), dtype=torch.float64, device=dev)
            for start in range(0, n_used, batch_size):
                idx = perm[start : start + batch_size]
                if step_fn is not None:
                    loss = step_fn(model, inputs[idx], targets[idx], optimizer)
                    _check_scalar("step_fn", loss)
                else:
                    loss = loss_fn(model, inputs[idx], targets[idx])
                    _check_scalar("loss_fn", loss)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                    optimizer.step()
                total += loss.detach().double() * idx.shape[0]
            scheduler.step()
            train_loss = float(total) / n_used
            if not math.isfinite(train_loss):
                # stop before writing a checkpoint, so the last good one stays on disk
                raise FloatingPointError(
                    f"training loss became {train_loss} in epoch {epoch}; try a lower lr or max_grad_norm"
                )
            record: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "lr": float(epoch_lr)}
            for name, (x, y) in eval_data.items():
                for metric, value in _evaluate_tensors(model, x, y, eval_fn, eval_batch_size).items():
                    record[f"{name}/{metric}"] = value
            record["seconds"] = time.perf_counter() - t0
            history.records.append(record)

            if ckpt_path is not None:
                _save_atomic(
                    {
                        "format": CHECKPOINT_FORMAT,
                        "epoch": epoch,
                        "config": config,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "history": history.to_dict(),
                        "rng": _rng_state(dev),
                    },
                    ckpt_path,
                )
            if bar is not None:
                bar.set_postfix(_postfix(record, eval_data), refresh=False)
                bar.update(1)
            for cb in callbacks:
                cb(epoch, history, model)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return history


def _progress_bar(epochs: int, start_epoch: int, progress: bool):
    if not progress:
        return None  # no tqdm object at all, so nothing can reach stdout/stderr
    from tqdm.auto import tqdm

    return tqdm(total=epochs, initial=start_epoch, desc="epochs", unit="epoch")


def _postfix(record: Mapping, eval_data: Mapping) -> dict[str, str]:
    shown = {"loss": f"{record['train_loss']:.4g}"}
    first = next(iter(eval_data), None)
    if first is not None:
        key = next((k for k in record if k.startswith(first + "/")), None)
        if key is not None:
            shown[key] = f"{record[key]:.4g}"
    return shown
