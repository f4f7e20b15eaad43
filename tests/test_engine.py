"""poselab.engine: records, divergence, streams and exact resume, on a toy task."""

import math

import pytest
import torch
from torch import nn

from poselab.engine import Streams, Task, fit, stream_seed


class Toy(Task):
    """Linear regression on noisy data drawn from the run's streams, with dropout (global RNG)."""

    def __init__(self, lr=0.05, blow_up_at=None):
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.2), nn.Linear(8, 1))
        self.modules = {"net": self.net}
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=0.9)
        self.w = torch.tensor([[1.0], [-2.0], [0.5]])
        self.blow_up_at = blow_up_at
        self.evaluations = 0

    def step(self, iteration, streams):
        x = torch.randn(16, 3, generator=streams["batches"])
        y = x @ self.w + 0.1 * torch.randn(16, 1, generator=streams["noise"])
        loss = (self.net(x) - y).pow(2).mean()
        if iteration == self.blow_up_at:
            loss = loss * math.inf
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "batch": 16}

    def evaluate(self):
        self.evaluations += 1
        with torch.no_grad():
            x = torch.linspace(-1, 1, 12).reshape(4, 3)
            mse = float((self.net.eval()(x) - x @ self.w).pow(2).mean())
        self.net.train()
        return {"test/mse": mse}


def _run(task, **kw):
    task.net.train()
    args = dict(steps=12, seed=3, streams=Streams(3, ("batches", "noise")), record_at=[4, 8, 12], progress=False,
                scheduler_every=4, timed=True)
    return fit(task, **{**args, **kw})


def _same(a, b):
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h.records]  # noqa: E731
    assert drop(a) == drop(b)


def test_records_hold_the_window_means_lr_and_evaluation():
    history = _run(Toy(), record_start=True)
    assert [r["iteration"] for r in history.records] == [0, 4, 8, 12]
    assert list(history.records[1]) == ["iteration", "lr", "loss", "batch", "test/mse", "seconds"]
    assert [r["lr"] for r in history.records[1:]] == pytest.approx([0.05, 0.045, 0.0405])  # decays every 4 steps
    assert history.records[1]["batch"] == 16.0
    assert history.records[-1]["loss"] < history.records[1]["loss"]


def test_interrupted_and_resumed_equals_uninterrupted_bitwise(tmp_path):
    whole = Toy()
    reference = _run(whole)

    def stop_after_first(record, history):
        if record["iteration"] == 4:
            raise KeyboardInterrupt

    ckpt = tmp_path / "run.safetensors"
    with pytest.raises(KeyboardInterrupt):
        _run(Toy(), checkpoint=ckpt, callbacks=[stop_after_first])
    torch.manual_seed(123)  # the global RNG is restored from the checkpoint, whatever happened in between
    resumed_task = Toy()
    resumed = _run(resumed_task, checkpoint=ckpt)
    _same(resumed, reference)
    for p, q in zip(resumed_task.net.parameters(), whole.net.parameters()):
        assert torch.equal(p, q)
    again = Toy()
    assert len(_run(again, checkpoint=ckpt).records) == 3 and again.evaluations == 0, "a finished run is not retrained"


def test_a_checkpoint_of_another_run_names_the_setting_and_the_way_out(tmp_path):
    ckpt = tmp_path / "run.safetensors"
    _run(Toy(), checkpoint=ckpt)
    with pytest.raises(ValueError, match=r"seed: 3 in the checkpoint vs 4 now.*--fresh"):
        _run(Toy(), checkpoint=ckpt, seed=4, streams=Streams(3, ("batches", "noise")))
    _run(Toy(), checkpoint=ckpt, seed=4, resume=False, streams=Streams(3, ("batches", "noise")))


def test_divergence_raises_or_is_recorded_with_the_layout_of_a_sound_run():
    with pytest.raises(FloatingPointError, match="diverged by step 6 .*loss = inf"):
        _run(Toy(blow_up_at=5))
    history = _run(Toy(blow_up_at=5), on_divergence="record", record_start=True)
    assert [r["iteration"] for r in history.records] == [0, 4, 8, 12]
    assert [r["diverged"] for r in history.records] == [0.0, 0.0, 1.0, 1.0]
    assert math.isnan(history.records[2]["test/mse"]) and math.isnan(history.records[3]["loss"])
    synced_late = _run(Toy(blow_up_at=5), on_divergence="record", sync="record")
    assert [r["diverged"] for r in synced_late.records] == [0.0, 1.0, 1.0]


def test_one_sync_per_record_gives_the_same_numbers():
    _same(_run(Toy(), sync="record"), _run(Toy(), sync="step"))


def test_streams_are_seeded_by_name_and_independent():
    assert stream_seed(0, "batches") == stream_seed(0, "batches") != stream_seed(0, "noise") != stream_seed(1, "noise")
    a, b = Streams(0, ("batches", "noise")), Streams(0, ("noise",))
    assert torch.equal(torch.rand(3, generator=a["noise"]), torch.rand(3, generator=b["noise"]))
    with pytest.raises(KeyError, match=r"no random stream 'views'; this run has \['noise'\]"):
        b["views"]
    with pytest.raises(ValueError, match="seed"):
        Streams(-1)


@pytest.mark.parametrize("bad, says", [(dict(record_at=[4, 8]), "ending with 12"), (dict(steps=0), "steps"),
                                       (dict(on_divergence="ignore"), "on_divergence"), (dict(sync="never"), "sync")])
def test_bad_arguments_are_refused(bad, says):
    with pytest.raises(ValueError, match=says):
        _run(Toy(), **bad)


def test_only_watched_values_signal_divergence():
    class NaNStat(Toy):
        def step(self, iteration, streams):
            return {**super().step(iteration, streams), "confidence": math.nan}  # e.g. a method without a teacher

    with pytest.raises(FloatingPointError, match="confidence = nan"):
        _run(NaNStat())
    history = _run(NaNStat(), watch=("loss",))
    assert len(history.records) == 3 and math.isnan(history.records[-1]["confidence"])


class Interrupted(Toy):
    """Raises KeyboardInterrupt (like a Ctrl-C) at optimisation step ``at`` (0-based)."""

    def __init__(self, at, **kw):
        super().__init__(**kw)
        self.at = at

    def step(self, iteration, streams):
        if iteration == self.at:
            raise KeyboardInterrupt
        return super().step(iteration, streams)


def test_an_interruption_in_the_first_window_restarts_from_the_starting_point(tmp_path):
    """The task trains its modules in place; without the step-0 checkpoint a rerun would start
    from the weights the interrupted window left behind."""
    reference = _run(Toy())
    ckpt, task = tmp_path / "run.safetensors", Interrupted(at=2)
    with pytest.raises(KeyboardInterrupt):
        _run(task, checkpoint=ckpt)
    task.at = None  # the same objects, their weights moved by two steps
    _same(_run(task, checkpoint=ckpt), reference)


def test_divergence_after_a_resume_keeps_the_record_layout_and_a_diverged_run_is_finished(tmp_path):
    uninterrupted = _run(Toy(blow_up_at=9), on_divergence="record", record_start=True)
    ckpt, task = tmp_path / "run.safetensors", Interrupted(at=6, blow_up_at=9)
    with pytest.raises(KeyboardInterrupt):
        _run(task, checkpoint=ckpt, on_divergence="record", record_start=True)
    resumed = _run(Toy(blow_up_at=9), checkpoint=ckpt, on_divergence="record", record_start=True)
    assert [set(r) for r in resumed.records] == [set(r) for r in uninterrupted.records]
    assert [r["diverged"] for r in resumed.records] == [0.0, 0.0, 0.0, 1.0]
    again = Interrupted(at=0, blow_up_at=9)  # a finished (diverged) run is returned, not trained
    assert len(_run(again, checkpoint=ckpt, on_divergence="record", record_start=True).records) == 4


def test_a_fingerprint_with_nan_or_numpy_values_matches_itself(tmp_path):
    import numpy as np

    ckpt = tmp_path / "run.safetensors"
    _run(Toy(), checkpoint=ckpt, fingerprint={"clip": math.nan}, seed=np.int64(3))
    task = Interrupted(at=0)  # training again would raise
    _run(task, checkpoint=ckpt, fingerprint={"clip": math.nan}, seed=3)
    with pytest.raises(TypeError, match="fingerprint: .*plain values"):
        _run(Toy(), checkpoint=tmp_path / "other.safetensors", fingerprint={"fn": print})


def test_watch_must_name_values():
    with pytest.raises(TypeError, match="watch: expected a sequence of value names"):
        _run(Toy(), watch="loss")
