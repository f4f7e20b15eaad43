"""The training engine: one loop, checkpoint and exact resume for every method.

A method describes its training as a :class:`Task`: the modules it trains (and those it only
carries, such as an EMA teacher), its optimiser and scheduler, and one optimisation step. :func:`fit`
runs the steps and owns everything around them:

- **random streams**: :class:`Streams`, named CPU generators; stream ``name`` of run seed ``s``
  starts from ``SeedSequence([s, crc32(name)])``, so streams never overlap and adding one leaves
  the others alone. Python, NumPy and torch's global generators (dropout) are seeded with
  :func:`~poselab.checks.seed_everything` when ``seed_global`` is set;
- **schedule**: the scheduler steps after every ``scheduler_every`` optimisation steps;
- **records**: after each of ``record_at`` (1-based step counts) the History gets ``iteration``,
  ``lr`` (that of the window's last step), the task's summary of its steps' values (means by
  default), its evaluation, ``diverged`` (with ``on_divergence="record"``) and, when ``timed``,
  ``seconds``;
  with ``record_start`` a first record at step 0 holds the evaluation of the starting point;
- **divergence**: a non-finite step value, or :meth:`Task.finite` false, either raises
  ``FloatingPointError`` (``"raise"``; the last checkpoint stays on disk) or ends the run with the
  record of its window and one NaN record per remaining point (``"record"``: a diverged run keeps
  the layout of one that did not);
- **progress**: a ``tqdm`` bar over steps;
- **checkpoints**: before the first step and after every record, atomically, one safetensors file
  (:mod:`poselab.checkpoint`) with every module, the optimiser, scheduler, streams, global random
  states, the task's own state, the history and the step. A rerun with the same fingerprint
  continues from it and ends bitwise equal to an uninterrupted run (same machine, same thread
  count); a diverged run is saved as finished.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from poselab.checkpoint import check_checkpoint_path, load_state, module_fingerprint, rng_state, save_state, set_rng_state
from poselab.checks import check_choice, check_int, check_seed, seed_everything
from poselab.tensorfile import tensor_sha256

__all__ = ["History", "log_points", "Streams", "stream_seed", "Task", "fit",
           "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "poselab.engine/1"

DIVERGENCE = ("raise", "record")
SYNC = ("step", "record")


@dataclass
class History:
    """The records of a run, one per record point of :func:`fit` (and one at step 0 with
    ``record_start``): ``iteration`` (steps taken), ``lr``, the task's summary of the window
    (e.g. :func:`~poselab.train.train_model`'s ``epoch`` and ``train_loss``), one
    ``"{set}/{metric}"`` float per evaluation, and ``diverged`` / ``seconds`` where the run asks
    for them.
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


def stream_seed(seed: int, name: str) -> int:
    """The seed of stream ``name`` of a run with ``seed``: a 63-bit int from ``SeedSequence([seed, crc32(name)])``."""
    check_seed(seed)
    state = np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


class Streams:
    """The named CPU random generators of one run (batch indices, augmentations, noise...).

    ``Streams(seed, ("batches", "views"))`` seeds each with :func:`stream_seed`; ``seeds`` gives
    explicit seeds instead (``{"batches": 3}``). Generators live on the CPU, so a run draws the
    same numbers on every device.
    """

    def __init__(self, seed: int = 0, names: Sequence[str] = ("batches",), *, seeds: Mapping[str, int] | None = None):
        if seeds is None:
            if isinstance(names, str) or not names or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"names: expected a sequence of stream names, got {names!r}")
            seeds = {name: stream_seed(seed, name) for name in names}
        self._generators = {name: torch.Generator().manual_seed(int(s)) for name, s in seeds.items()}

    def __getitem__(self, name: str) -> torch.Generator:
        try:
            return self._generators[name]
        except KeyError:
            raise KeyError(f"no random stream {name!r}; this run has {sorted(self._generators)}") from None

    def names(self) -> list[str]:
        return list(self._generators)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: g.get_state() for name, g in self._generators.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if set(state) != set(self._generators):
            raise ValueError(f"streams: the checkpoint has {sorted(state)}, this run {sorted(self._generators)}")
        for name, g in self._generators.items():
            g.set_state(state[name])


class Task:
    """One method's training as the engine runs it.

    A subclass sets, before :func:`fit` is called,

    - ``modules``: ``{name: nn.Module}``, everything whose state a checkpoint must hold (the
      trained networks and what they carry: an EMA teacher, an energy network);
    - ``optimizer`` (and optionally ``scheduler``, a ``torch.optim.lr_scheduler`` object);

    and implements :meth:`step`. The other methods have defaults.
    """

    modules: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: Any = None

    def step(self, iteration: int, streams: Streams) -> Mapping[str, torch.Tensor | float]:
        """Take optimisation step ``iteration`` (0-based) and return its values to record
        (0-dim tensors or numbers, e.g. ``{"loss": loss.detach()}``)."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """Evaluations added to every record (``{"test/mpjpe_mm": ...}``); none by default."""
        return {}

    def summarise(self, window: list[dict[str, float]]) -> dict[str, float]:
        """A record's values from the steps since the previous record: each value's mean (NaN propagates)."""
        return {key: float(sum(w[key] for w in window) / len(window)) for key in window[0]}

    def start_record(self) -> dict[str, float]:
        """Values of the step-0 record besides ``iteration``, ``lr`` and the evaluation."""
        return {}

    def finite(self) -> torch.Tensor:
        """0-dim bool tensor: the run is still sound (default: every parameter of every module is finite)."""
        params = [p for m in self.modules.values() for p in m.parameters()]
        return torch.stack([torch.isfinite(p).all() for p in params]).all() if params else torch.tensor(True)

    def state_dict(self) -> dict[str, Any]:
        """State of the task itself that a checkpoint must hold (beyond modules, optimiser and streams)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must share with this task to be continued by it: by default every
        module's configuration (:func:`~poselab.checkpoint.module_fingerprint`). Subclasses add their
        hyper-parameters and the SHA-256 of their data."""
        return {name: module_fingerprint(m) for name, m in self.modules.items()}


def _record_points(steps: int, record_at: Sequence[int] | None) -> list[int]:
    points = sorted(set(record_at)) if record_at is not None else [steps]
    if not points or points[-1] != steps or points[0] < 1 or not all(isinstance(p, int) for p in points):
        raise ValueError(f"record_at: expected step counts in [1, {steps}] ending with {steps}, got {record_at!r}")
    return points


def _as_floats(window: list[Mapping[str, Any]]) -> list[dict[str, float]]:
    """The window's values as floats, with one device sync for all of its tensors."""
    tensors = [v for w in window for v in w.values() if isinstance(v, torch.Tensor)]
    numbers = iter(torch.stack([t.detach().to(tensors[0].device, torch.float64).reshape(()) for t in tensors]).tolist()
                   if tensors else [])
    return [{k: next(numbers) if isinstance(v, torch.Tensor) else float(v) for k, v in w.items()} for w in window]


def fit(task: Task, *, steps: int, seed: int, streams: Streams | None = None, record_at: Sequence[int] | None = None,
        record_start: bool = False, scheduler_every: int = 1, on_divergence: str = "raise", sync: str = "step",
        watch: Sequence[str] | None = None, timed: bool = False,
        seed_global: bool = True, checkpoint: str | Path | None = None, resume: bool = True,
        fingerprint: Mapping[str, Any] | None = None, device: torch.device | None = None, progress: bool = True,
        desc: str = "training", unit: str = "step", postfix: Sequence[str] = ("loss",),
        callbacks: Sequence[Callable[[dict, History], None]] = ()) -> History:
    """Run ``task`` for ``steps`` optimisation steps and return the :class:`History`.

    Args:
        task: the method's :class:`Task` (modules already on ``device``).
        steps: optimisation steps in all (counting those of a resumed checkpoint).
        seed: the run's seed (streams, global generators, fingerprint).
        streams: the run's :class:`Streams` (default ``Streams(seed)``, one stream ``"batches"``).
        record_at: step counts after which a record is made (default: only after the last step).
        record_start: also record the evaluation before the first step (``iteration`` 0).
        scheduler_every: steps between two scheduler steps (an epoch, for per-epoch decay).
        on_divergence: ``"raise"`` or ``"record"`` (see the module docstring).
        sync: ``"step"`` reads every step's values at once (divergence is caught at the step that
            diverged); ``"record"`` reads them once per record (one device sync per window).
        watch: the step values whose non-finite value means divergence (default: all of them;
            a method whose values may be NaN in a sound run names its loss).
        timed: records also get ``seconds``, the wall time of their window (steps and evaluation).
        seed_global: seed Python, NumPy and torch's global generators with ``seed`` first.
        checkpoint: a file written after every record and continued by a rerun (``resume``).
        fingerprint: the run's settings besides the task's own (:meth:`Task.fingerprint`), e.g.
            hyper-parameters; the engine adds ``steps``, ``record_at``, ``scheduler_every`` and ``seed``.
        device: the task's device (for the CUDA random state of a checkpoint); default: that of the
            first parameter.
        progress, desc, unit, postfix: the ``tqdm`` bar and the record values shown on it.
        callbacks: ``callback(record, history)`` after every record, once its checkpoint is written (a
            callback that draws random numbers or changes a module breaks exact resume).
    """
    check_int("steps", steps, 1)
    check_int("scheduler_every", scheduler_every, 1)
    seed = check_seed(seed)
    check_choice("on_divergence", on_divergence, DIVERGENCE)
    check_choice("sync", sync, SYNC)
    if watch is not None:
        if isinstance(watch, str) or not all(isinstance(k, str) for k in watch):
            raise TypeError(f"watch: expected a sequence of value names such as ('loss',), got {watch!r}")
        watch = tuple(watch)
    points = _record_points(steps, record_at)
    path = None if checkpoint is None else check_checkpoint_path("checkpoint", checkpoint)
    streams = Streams(seed) if streams is None else streams
    if device is None:
        first = next((p for m in task.modules.values() for p in m.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    if seed_global:
        seed_everything(seed)
    # the JSON form is made now, so that a value a file cannot hold fails before any training
    run_fingerprint = _jsonable({
        "task": task.fingerprint(), "run": dict(fingerprint or {}), "steps": steps, "record_at": points,
        "scheduler_every": scheduler_every, "seed": seed, "seed_global": seed_global, "record_start": record_start,
        "on_divergence": on_divergence, "watch": watch,
        "streams": {name: tensor_sha256(s) for name, s in streams.state_dict().items()},
        "optimizer": {"class": f"{type(task.optimizer).__module__}.{type(task.optimizer).__qualname__}",
                      "groups": [{k: v for k, v in g.items() if k != "params"} | {"size": len(g["params"])}
                                 for g in task.optimizer.param_groups]},
        "scheduler": None if task.scheduler is None else type(task.scheduler).__qualname__})
    history, start, eval_keys = History(), 0, []
    if path is not None and resume and path.exists():
        state = load_state(path, run_fingerprint, format=CHECKPOINT_FORMAT)
        _restore(task, streams, state, device)
        history, start, eval_keys = History.from_dict(state["history"]), int(state["step"]), list(state["eval_keys"])
        if start >= steps:
            return history

    def save(step: int) -> None:
        if path is not None:
            save_state(path, _state(task, streams, history, step, eval_keys, device), run_fingerprint,
                       format=CHECKPOINT_FORMAT)

    def lr() -> float:
        return float(task.optimizer.param_groups[0]["lr"])

    if start == 0 and not history.records:
        if record_start:
            evaluation = task.evaluate()
            eval_keys = list(evaluation)
            record = {"iteration": 0, "lr": lr(), **task.start_record(), **evaluation}
            if on_divergence == "record":
                record["diverged"] = 0.0
            history.records.append(record)
        save(0)  # a run interrupted in its first window restarts from exactly this point

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc=desc, unit=unit)
    window: list[Mapping[str, Any]] = []
    window_start = time.perf_counter()
    try:
        for it in range(start, steps):
            step_lr = lr()
            values = task.step(it, streams)
            if task.scheduler is not None and (it + 1) % scheduler_every == 0:
                task.scheduler.step()
            done = it + 1
            diverged = False
            if sync == "step":
                sound = task.finite()
                floats = _as_floats([{**values, "__finite__": sound}])[0]
                diverged = floats.pop("__finite__") != 1.0 or not _all_finite([floats], watch)
                values = floats
            window.append(values)
            if bar is not None:
                bar.update(1)
            if not diverged and done not in points:
                continue
            window = _as_floats(window) if sync == "record" else window
            if sync == "record":
                diverged = not _all_finite(window, watch) or not bool(task.finite())
            if diverged and on_divergence == "raise":
                bad = next((f"{k} = {v}" for w in window for k, v in w.items()
                            if (watch is None or k in watch) and not math.isfinite(v)), "a parameter is not finite")
                raise FloatingPointError(f"training diverged by step {done} ({bad}); the last checkpoint, if any, "
                                         f"is kept; try a lower lr or a gradient-norm limit")
            point = next(p for p in points if p >= done)
            record = {"iteration": point, "lr": step_lr, **task.summarise(window)}
            if diverged:
                if not eval_keys:  # no evaluation was recorded yet: learn its keys (values of a broken model)
                    eval_keys = list(_evaluation_keys(task))
                record.update({key: math.nan for key in eval_keys})
            else:
                evaluation = task.evaluate()
                eval_keys = eval_keys or list(evaluation)
                record.update(evaluation)
            if on_divergence == "record":
                record["diverged"] = float(diverged)
            if timed:
                record["seconds"] = time.perf_counter() - window_start
            history.records.append(record)
            if diverged:
                for later in points[points.index(point) + 1:]:
                    history.records.append({**{k: math.nan for k in record if k not in ("iteration", "diverged")},
                                            "iteration": later, "diverged": 1.0})
            save(steps if diverged else done)  # a diverged run is finished: a rerun returns its history
            if bar is not None:
                bar.set_postfix({k: f"{record[k]:.4g}" for k in postfix if k in record}, refresh=False)
            for callback in callbacks:
                callback(record, history)
            if diverged:
                break
            window, window_start = [], time.perf_counter()
    finally:
        if bar is not None:
            bar.close()
    return history


def _evaluation_keys(task: Task) -> list[str]:
    try:
        return list(task.evaluate())
    except Exception:  # a non-finite network may not even evaluate
        return []


def _all_finite(window: list[Mapping[str, float]], watch: Sequence[str] | None) -> bool:
    return all(math.isfinite(v) for w in window for k, v in w.items() if watch is None or k in watch)


def _jsonable(value: Any) -> Any:
    """The fingerprint as it reads back from a file: tuples become lists, non-finite floats their
    ``repr`` (NaN != NaN would make a fingerprint differ from itself); ``TypeError`` for a value
    JSON cannot hold."""
    import json

    def plain(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return repr(v)
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    try:
        return json.loads(json.dumps(plain(value)))
    except TypeError as exc:
        raise TypeError(f"fingerprint: {exc}; a run's settings must be plain values (ints, floats, strings, "
                        f"lists, dicts)") from None


def _state(task: Task, streams: Streams, history: History, step: int, eval_keys: list[str],
           device: torch.device) -> dict[str, Any]:
    return {"modules": {name: m.state_dict() for name, m in task.modules.items()}, "eval_keys": list(eval_keys),
            "optimizer": task.optimizer.state_dict(),
            "scheduler": None if task.scheduler is None else task.scheduler.state_dict(),
            "streams": streams.state_dict(), "rng": rng_state(device), "task": task.state_dict(),
            "history": history.to_dict(), "step": step}


def _restore(task: Task, streams: Streams, state: Mapping[str, Any], device: torch.device) -> None:
    for name, module in task.modules.items():
        module.load_state_dict(state["modules"][name])
    task.optimizer.load_state_dict(state["optimizer"])
    if task.scheduler is not None:
        task.scheduler.load_state_dict(state["scheduler"])
    streams.load_state_dict(state["streams"])
    set_rng_state(state["rng"], device)
    task.load_state_dict(state["task"])
