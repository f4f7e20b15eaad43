"""Tests for poselab.train: convergence, reproducibility, exact resume, checkpoints, eval, History."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import poselab.train as train_mod
from poselab.checkpoint import module_fingerprint, read_state
from poselab.engine import CHECKPOINT_FORMAT
from poselab.train import History, evaluate, mpjpe_loss, train_model

J = 4


def make_data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, J, 2) inputs and a fixed linear (N, J, 3) target, in 'metres'."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, J, 2, generator=g)
    w = torch.randn(J * 2, J * 3, generator=torch.Generator().manual_seed(99)) * 0.3
    y = (x.reshape(n, -1) @ w).reshape(n, J, 3)
    return x, y


def make_model(init_seed: int = 0, dropout: float = 0.2) -> nn.Module:
    torch.manual_seed(init_seed)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(J * 2, 32),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(32, J * 3),
        nn.Unflatten(1, (J, 3)),
    )


FAST = dict(batch_size=16, lr=1e-2, device="cpu", progress=False)


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loss_decreases_and_records_fields():
    data = make_data()
    hist = train_model(make_model(dropout=0.0), data, epochs=15, **FAST)
    losses = hist.column("train_loss")
    assert len(hist) == 15 and hist.column("epoch") == list(range(1, 16))
    assert losses[-1] < 0.3 * losses[0]
    assert set(hist.last) == {"iteration", "epoch", "train_loss", "lr", "seconds"}


def test_lr_decays_exponentially_per_epoch():
    hist = train_model(make_model(), make_data(), epochs=3, lr_decay=0.5, **{**FAST, "lr": 0.01})
    assert hist.column("lr") == pytest.approx([0.01, 0.005, 0.0025], rel=1e-12)


def test_accepts_dataset_objects_with_inputs_targets():
    x, y = make_data()
    ds = SimpleNamespace(inputs=x, targets=y)
    h1 = train_model(m1 := make_model(), ds, epochs=2, **FAST)
    h2 = train_model(m2 := make_model(), (x, y), epochs=2, **FAST)
    assert h1.column("train_loss") == h2.column("train_loss") and states_equal(m1, m2)


def test_same_seed_bitwise_identical_different_seed_differs():
    data = make_data()
    m1, m2, m3 = make_model(), make_model(), make_model()
    h1 = train_model(m1, data, epochs=3, seed=5, **FAST)
    h2 = train_model(m2, data, epochs=3, seed=5, **FAST)
    h3 = train_model(m3, data, epochs=3, seed=6, **FAST)
    assert states_equal(m1, m2) and h1.column("train_loss") == h2.column("train_loss")
    assert not states_equal(m1, m3)


def test_grad_clipping_changes_the_updates():
    data = make_data()
    m1, m2 = make_model(), make_model()
    train_model(m1, data, epochs=1, **FAST)
    train_model(m2, data, epochs=1, max_grad_norm=1e-3, **FAST)
    assert not states_equal(m1, m2)


class Interrupt:
    """Callback that simulates a disconnect after a given epoch."""

    def __init__(self, after: int):
        self.after, self.seen = after, []

    def __call__(self, epoch, history, model):
        self.seen.append(epoch)
        assert history.last["epoch"] == epoch
        if epoch == self.after:
            raise KeyboardInterrupt


def _interrupted_then_resumed(tmp_path, data):
    ckpt = tmp_path / "run" / "ckpt.pt"
    stopper = Interrupt(after=2)
    with pytest.raises(KeyboardInterrupt):
        train_model(make_model(), data, epochs=4, checkpoint_path=ckpt, callbacks=[stopper], **FAST)
    assert stopper.seen == [1, 2]
    saved, _ = read_state(ckpt, format=CHECKPOINT_FORMAT)  # epoch 2 is on disk, and nothing half-written next to it
    assert saved["history"]["records"][-1]["epoch"] == 2 and len(saved["history"]["records"]) == 2
    assert list(ckpt.parent.iterdir()) == [ckpt]
    torch.rand(1000)  # the new "session" has a different global RNG state
    later = Interrupt(after=-1)
    resumed = make_model(init_seed=123)  # fresh process: different init, overwritten by the checkpoint
    hist = train_model(resumed, data, epochs=4, checkpoint_path=ckpt, resume=True, callbacks=later, **FAST)
    assert later.seen == [3, 4]
    return resumed, hist


def test_resume_reproduces_uninterrupted_run(tmp_path):
    data = make_data()
    full = make_model()
    full_hist = train_model(full, data, epochs=4, **FAST)
    resumed, hist = _interrupted_then_resumed(tmp_path, data)
    assert states_equal(full, resumed)
    assert torch.equal(torch.tensor(hist.column("train_loss")), torch.tensor(full_hist.column("train_loss")))
    assert hist.column("epoch") == [1, 2, 3, 4]


def test_resume_without_rng_restore_would_differ(tmp_path, monkeypatch):
    """Control: the Dropout masks make the RNG restoration necessary, so the test above can fail."""
    data = make_data()
    full = make_model()
    train_model(full, data, epochs=4, **FAST)
    monkeypatch.setattr("poselab.engine.set_rng_state", lambda state, device: None)
    resumed, _ = _interrupted_then_resumed(tmp_path, data)
    assert not states_equal(full, resumed)


def test_complete_checkpoint_returns_history_without_training(tmp_path):
    data = make_data()
    ckpt = tmp_path / "c.pt"
    trained = make_model()
    first = train_model(trained, data, epochs=2, checkpoint_path=ckpt, **FAST)
    calls = []
    fresh = make_model(init_seed=7)
    again = train_model(fresh, data, epochs=2, checkpoint_path=ckpt, callbacks=[lambda *a: calls.append(a)], **FAST)
    assert calls == []
    assert again.to_dict() == first.to_dict()
    assert states_equal(fresh, trained)  # the finished weights are handed back too


def test_resume_false_starts_over(tmp_path):
    data = make_data()
    ckpt = tmp_path / "c.pt"
    train_model(make_model(), data, epochs=2, checkpoint_path=ckpt, **FAST)
    calls = []
    train_model(
        make_model(), data, epochs=2, checkpoint_path=ckpt, resume=False,
        callbacks=lambda e, h, m: calls.append(e), **FAST,
    )
    assert calls == [1, 2]


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(lr=5e-3), "lr"),
        (dict(batch_size=8), "batch_size"),
        (dict(epochs=5), "epochs"),
        (dict(seed=1), "seed"),
        (dict(data=make_data(n=32)), "num_samples"),
        (dict(data=make_data(seed=3)), "data_sha256/train/inputs"),
        (dict(model=nn.Sequential(nn.Flatten(), nn.Linear(J * 2, J * 3), nn.Unflatten(1, (J, 3)))), "parameters"),
    ],
)
def test_incompatible_checkpoint_raises(tmp_path, change, name):
    ckpt = tmp_path / "c.pt"
    base = dict(FAST, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train_model(make_model(), make_data(), checkpoint_path=ckpt, callbacks=[Interrupt(1)], **base)
    change = dict(change)
    data = change.pop("data", make_data())
    model = change.pop("model", make_model())
    with pytest.raises(ValueError, match=rf"incompatible training configuration \(.*{name}.*resume=False"):
        train_model(model, data, checkpoint_path=ckpt, **{**base, **change})


def test_foreign_checkpoint_file_raises(tmp_path):
    ckpt = tmp_path / "c.pt"
    from poselab.tensorfile import save_tensor_file

    save_tensor_file(ckpt, {"weights": torch.zeros(3)}, {}, format="poselab.images/2")
    with pytest.raises(ValueError, match="c.pt.*expected format 'poselab.engine/1', found 'poselab.images/2'"):
        train_model(make_model(), make_data(), epochs=1, checkpoint_path=ckpt, **FAST)
    torch.save({"weights": torch.zeros(3)}, ckpt)
    with pytest.raises(ValueError, match="c.pt.*could not be read"):
        train_model(make_model(), make_data(), epochs=1, checkpoint_path=ckpt, **FAST)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="c.pt.*could not be read"):
        train_model(make_model(), make_data(), epochs=1, checkpoint_path=ckpt, **FAST)


def _first_epoch_then_interrupt(ckpt, model=None, data=None, **kwargs):
    """Epoch 1 of a 3-epoch run is on disk at ``ckpt``."""
    with pytest.raises(KeyboardInterrupt):
        train_model(model or make_model(), data or make_data(), epochs=3, checkpoint_path=ckpt,
                    callbacks=[Interrupt(1)], **{**FAST, **kwargs})


def test_dropout_rate_is_part_of_the_fingerprint(tmp_path):
    """Dropout changes no parameter shape; a checkpoint of p=0.1 must still refuse p=0.2."""
    ckpt = tmp_path / "c.pt"
    _first_epoch_then_interrupt(ckpt, model=make_model(dropout=0.1))
    with pytest.raises(ValueError, match=r"incompatible training configuration \(task/model/3\.p: 0\.1 in the checkpoint "
                                         r"vs 0\.2 now\)"):
        train_model(make_model(dropout=0.2), make_data(), epochs=3, checkpoint_path=ckpt, **FAST)
    hist = train_model(make_model(dropout=0.1), make_data(), epochs=3, checkpoint_path=ckpt, **FAST)  # same: resumes
    assert hist.column("epoch") == [1, 2, 3]


def test_every_byte_of_the_training_data_is_fingerprinted(tmp_path):
    """One value changed in a row that a strided sample (every n // 64-th row) would not read."""
    x, y = make_data(n=200)
    ckpt = tmp_path / "c.pt"
    _first_epoch_then_interrupt(ckpt, data=(x, y))
    stride = max(1, 200 // 64)
    assert 1 % stride != 0  # row 1 is outside such a sample
    for name, (x2, y2) in {"inputs": (x.clone(), y), "targets": (x, y.clone())}.items():
        (x2 if name == "inputs" else y2)[1, 0, 0] += 1e-6
        with pytest.raises(ValueError, match=rf"data_sha256/train/{name}: '[0-9a-f]+\.\.\.' in the checkpoint"):
            train_model(make_model(), (x2, y2), epochs=3, checkpoint_path=ckpt, **FAST)


def test_eval_sets_are_fingerprinted(tmp_path):
    data, val = make_data(), make_data(n=40, seed=1)
    ckpt = tmp_path / "c.pt"
    _first_epoch_then_interrupt(ckpt, eval_sets={"val": val})
    other = (val[0].clone(), val[1])
    other[0][17, 2, 1] = -other[0][17, 2, 1]
    with pytest.raises(ValueError, match=r"data_sha256/eval/val/inputs: .* in the checkpoint vs .* now.*--fresh"):
        train_model(make_model(), data, epochs=3, checkpoint_path=ckpt, eval_sets={"val": other}, **FAST)
    with pytest.raises(ValueError, match=r"eval_sets: \['val'\] in the checkpoint vs \['test'\] now"):
        train_model(make_model(), data, epochs=3, checkpoint_path=ckpt, eval_sets={"test": val}, **FAST)
    hist = train_model(make_model(), data, epochs=3, checkpoint_path=ckpt, eval_sets={"val": val}, **FAST)
    assert hist.column("epoch") == [1, 2, 3]


def weighted_loss(weight):
    def loss(model, inputs, targets):
        return weight * mpjpe_loss(model, inputs, targets)

    return loss


def test_loss_function_settings_are_fingerprinted(tmp_path):
    """Two closures of the same factory are the same function with other settings."""
    ckpt = tmp_path / "c.pt"
    _first_epoch_then_interrupt(ckpt, loss_fn=weighted_loss(1.0))
    with pytest.raises(ValueError, match=r"loss_fn/settings/weight: 1\.0 in the checkpoint vs 2\.0 now"):
        train_model(make_model(), make_data(), epochs=3, checkpoint_path=ckpt, loss_fn=weighted_loss(2.0), **FAST)


def test_incompatible_error_names_both_ways_to_start_over(tmp_path):
    ckpt = tmp_path / "c.pt"
    _first_epoch_then_interrupt(ckpt)
    with pytest.raises(ValueError) as info:
        train_model(make_model(), make_data(), epochs=3, checkpoint_path=ckpt, **{**FAST, "lr": 5e-3})
    assert "resume=False" in str(info.value) and "--fresh" in str(info.value)
    assert "another checkpoint folder" in str(info.value)


def test_checkpoint_path_below_a_file_or_that_is_a_folder_raises(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.write_text("I am a file")
    with pytest.raises(ValueError, match=r"checkpoint_path: .*checkpoints.*is a file, not a folder"):
        train_model(make_model(), make_data(), epochs=1, checkpoint_path=folder / "run.pt", **FAST)
    with pytest.raises(ValueError, match=r"is a file, not a folder"):  # deeper below the file too
        train_model(make_model(), make_data(), epochs=1, checkpoint_path=folder / "a" / "run.pt", **FAST)
    with pytest.raises(ValueError, match=r"checkpoint_path: .* is a folder; expected the path of a checkpoint file"):
        train_model(make_model(), make_data(), epochs=1, checkpoint_path=tmp_path, **FAST)
    assert folder.read_text() == "I am a file"


class _Payload:
    """Unpickling this runs ``os.system("touch <marker>")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_crafted_pickle_checkpoint_is_refused_unexecuted(tmp_path, writer):
    import pickle

    ckpt, marker = tmp_path / "c.pt", tmp_path / "marker"
    payload = {"format": CHECKPOINT_FORMAT, "model": _Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps(payload, protocol=2))
    pickle.loads(pickle.dumps(_Payload(tmp_path / "control")))  # control: the payload works when unpickled
    assert (tmp_path / "control").exists()
    with pytest.raises(ValueError, match=r"c\.pt.*could not be read.*delete it, or start over with resume=False "
                                         r"\(on the command line: --fresh\)"):
        train_model(make_model(), make_data(), epochs=1, checkpoint_path=ckpt, **FAST)
    assert not marker.exists()


def test_a_truncated_checkpoint_gives_a_clear_error(tmp_path):
    ckpt = tmp_path / "c.pt"
    _first_epoch_then_interrupt(ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"c\.pt.*could not be read \(not a safetensors file or truncated.*--fresh"):
        train_model(make_model(), make_data(), epochs=3, checkpoint_path=ckpt, **FAST)


def test_module_fingerprint_sees_options_but_not_weights():
    from poselab.models.lifting import build_lifter

    a, b = build_lifter("gcn", hidden=8, num_blocks=1), build_lifter("gcn", hidden=8, num_blocks=1)
    with torch.no_grad():
        next(b.parameters()).add_(1.0)
    assert module_fingerprint(a) == module_fingerprint(b)  # weights are restored from the checkpoint
    other_graph = build_lifter("gcn", hidden=8, num_blocks=1, parents=(-1, 0, 0, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8,
                                                                        14, 15))
    diff = {k for k in module_fingerprint(a) if module_fingerprint(a)[k] != module_fingerprint(other_graph).get(k)}
    assert any(k.endswith(":constant") for k in diff)  # the adjacency lives in non-persistent buffers
    t1, t2 = build_lifter("transformer", dropout=0.1), build_lifter("transformer", dropout=0.2)
    assert module_fingerprint(t1) != module_fingerprint(t2)
    rng = torch.get_rng_state()
    module_fingerprint(t1)
    assert torch.equal(rng, torch.get_rng_state())  # draws no random numbers


def test_eval_metrics_recorded_every_epoch():
    data, val = make_data(), make_data(n=40, seed=1)
    model = make_model()
    hist = train_model(model, data, epochs=3, eval_sets={"val": val, "train": data}, eval_batch_size=7, **FAST)
    assert all(k in r for r in hist.records for k in ("val/mpjpe_mm", "train/mpjpe_mm"))
    # the last epoch's value is the final model's MPJPE in mm, computed by hand (eval mode: no dropout)
    model.eval()
    with torch.no_grad():
        expected = 1000 * (model(val[0]) - val[1]).norm(dim=-1).mean().item()
    assert hist.last["val/mpjpe_mm"] == pytest.approx(expected, rel=1e-5)
    assert model.training is False  # the caller's mode is kept


def test_custom_eval_fn_and_batched_average():
    x, y = make_data(n=50)

    def eval_fn(model, inputs, targets):
        err = (model(inputs) - targets).abs()
        return {"mae": err.mean().item(), "n_under": (err < 0.5).float().mean().item()}

    model = make_model()
    full = evaluate(model, (x, y), eval_fn=eval_fn, batch_size=None, device="cpu")
    batched = evaluate(model, (x, y), eval_fn=eval_fn, batch_size=7, device="cpu")
    assert full.keys() == {"mae", "n_under"}
    assert batched == pytest.approx(full, rel=1e-5)
    assert model.training  # mode restored
    hist = train_model(model, (x, y), epochs=2, eval_sets={"v": (x, y)}, eval_fn=eval_fn, **FAST)
    assert {"v/mae", "v/n_under"} <= set(hist.last)


def test_evaluate_default_is_mpjpe_mm_known_answer():
    # identity "model" on 3D inputs: error of each joint is exactly 0.003 m -> 3 mm
    targets = torch.zeros(5, 2, 3)
    inputs = targets + torch.tensor([0.0, 0.0, 0.003])
    assert evaluate(nn.Identity(), (inputs, targets), device="cpu") == pytest.approx({"mpjpe_mm": 3.0})


def test_mpjpe_loss_known_answer_and_shape_check():
    targets = torch.zeros(2, 1, 3)
    inputs = torch.tensor([[[3.0, 4.0, 0.0]], [[0.0, 0.0, 1.0]]])
    assert mpjpe_loss(nn.Identity(), inputs, targets).item() == pytest.approx(3.0)  # (5 + 1) / 2
    with pytest.raises(ValueError, match="model output"):
        mpjpe_loss(nn.Identity(), torch.zeros(2, 1, 2), targets)


def test_history_round_trip_and_helpers():
    hist = train_model(make_model(), make_data(), epochs=2, eval_sets={"val": make_data(8)}, **FAST)
    back = History.from_dict(json.loads(json.dumps(hist.to_dict())))
    assert back == hist and len(back) == 2 and back.last == hist.records[-1]
    assert back.column("epoch") == [1, 2]
    with pytest.raises(KeyError, match="'nope'.*available keys"):
        back.column("nope")
    with pytest.raises(ValueError, match="empty"):
        History().last
    with pytest.raises(ValueError, match="records"):
        History.from_dict({"rows": []})


def test_progress_false_prints_nothing_true_prints(capsys):
    data = make_data()
    train_model(make_model(), data, epochs=2, eval_sets={"val": data}, **FAST)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    train_model(make_model(), data, epochs=2, eval_sets={"val": data}, **{**FAST, "progress": True})
    out, err = capsys.readouterr()
    assert "8/8" in out + err and "train_loss=" in out + err  # 2 epochs of 4 steps


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(train_set=(torch.zeros(5, J, 2), torch.zeros(6, J, 3))), ValueError, "same number of samples"),
        (dict(train_set=(torch.zeros(0, J, 2), torch.zeros(0, J, 3))), ValueError, "empty"),
        (dict(train_set=[1, 2, 3]), TypeError, "pair"),
        (dict(train_set=object()), TypeError, r"\.inputs and \.targets"),
        (dict(train_set=(torch.zeros(5, J, 2), [0] * 5)), TypeError, "targets should be a torch.Tensor"),
        (dict(epochs=0), ValueError, "epochs: expected an int >= 1, got 0"),
        (dict(epochs=2.0), TypeError, "epochs"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(batch_size=-3), ValueError, "batch_size"),
        (dict(lr=float("nan")), ValueError, "lr: expected a finite number"),
        (dict(lr=-1.0), ValueError, "lr"),
        (dict(lr="0.1"), TypeError, "lr"),
        (dict(lr_decay=1.5), ValueError, "lr_decay"),
        (dict(weight_decay=-1e-4), ValueError, "weight_decay"),
        (dict(max_grad_norm=0.0), ValueError, "max_grad_norm"),
        (dict(device="gpu0"), ValueError, "device"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(eval_sets=[make_data()]), TypeError, "eval_sets"),
        (dict(eval_sets={"v": (torch.zeros(3, J, 2), torch.zeros(4, J, 3))}), ValueError, r"eval_sets\['v'\]"),
        (dict(loss_fn="mse"), TypeError, "loss_fn"),
        (dict(callbacks=[None]), TypeError, r"callbacks\[0\]"),
        (dict(model=lambda x: x), TypeError, "model"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, exc, match):
    args = dict(model=make_model(), train_set=make_data(8), epochs=1, batch_size=4, device="cpu", progress=False)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        train_model(args.pop("model"), args.pop("train_set"), **args)


def test_non_scalar_loss_and_non_finite_loss_raise(tmp_path):
    data = make_data(8)
    with pytest.raises(ValueError, match="loss_fn: expected a scalar"):
        train_model(make_model(), data, epochs=1, loss_fn=lambda m, x, y: (m(x) - y).abs(), **FAST)
    ckpt = tmp_path / "c.pt"
    with pytest.raises(FloatingPointError, match="diverged by step"):
        nan_loss = lambda m, x, y: m(x).sum() * float("nan")  # noqa: E731
        train_model(make_model(), data, epochs=1, checkpoint_path=ckpt, loss_fn=nan_loss, **FAST)
    saved, _ = read_state(ckpt, format=CHECKPOINT_FORMAT)
    assert saved["step"] == 0 and saved["history"]["records"] == []  # a broken epoch is never checkpointed


def test_a_trailing_single_sample_batch_does_not_break_batchnorm():
    from poselab.models.lifting import build_lifter

    torch.manual_seed(0)
    model = build_lifter("mlp", hidden=16, num_blocks=1)
    x, y = torch.randn(9, 17, 2), torch.randn(9, 17, 3)  # 9 % 4 == 1: the last batch would hold one sample
    history = train_model(model, (x, y), epochs=2, batch_size=4, progress=False)
    assert len(history) == 2 and all(math.isfinite(v) for v in history.column("train_loss"))


# ------------------------------------------------------------- step_fn and param_groups


def two_groups(lr0: float = 1e-2, lr1: float = 1e-3):
    """param_groups: the first Linear at ``lr0``, the second at ``lr1``."""

    def groups(model):
        return [{"params": list(model[1].parameters()), "lr": lr0}, {"params": list(model[4].parameters()), "lr": lr1}]

    return groups


def step_first_group_only(model, x, y, optimizer):
    """A step_fn that updates only the parameters of optimizer group 0 (Adam skips grad-less ones)."""
    optimizer.zero_grad(set_to_none=True)
    loss = mpjpe_loss(model, x, y)
    loss.backward(inputs=optimizer.param_groups[0]["params"])
    optimizer.step()
    return loss.detach()


def plain_step(model, x, y, optimizer):
    """The default step written out as a step_fn (MPJPE, backward, Adam)."""
    optimizer.zero_grad(set_to_none=True)
    loss = mpjpe_loss(model, x, y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def test_step_fn_called_once_per_batch_and_its_loss_recorded():
    data = make_data(n=40)  # batches of 16, 16, 8: the recorded loss is a sample-weighted mean
    calls = []

    def step(model, x, y, optimizer):
        loss = plain_step(model, x, y, optimizer)
        calls.append((float(loss), x.shape[0]))
        return loss

    hist = train_model(make_model(), data, epochs=2, step_fn=step, **FAST)
    assert [b for _, b in calls] == [16, 16, 8] * 2
    for epoch in range(2):
        batch = calls[3 * epoch : 3 * epoch + 3]
        expected = sum(loss * b for loss, b in batch) / 40
        assert hist.column("train_loss")[epoch] == pytest.approx(expected, rel=1e-6)


def test_step_fn_written_as_the_default_step_matches_it_bitwise():
    data = make_data()
    m1, m2 = make_model(), make_model()
    h1 = train_model(m1, data, epochs=2, **FAST)
    h2 = train_model(m2, data, epochs=2, step_fn=plain_step, **FAST)
    assert states_equal(m1, m2) and h1.column("train_loss") == h2.column("train_loss")


@pytest.mark.parametrize("extra", [dict(loss_fn=lambda m, x, y: mpjpe_loss(m, x, y)), dict(max_grad_norm=1.0)])
def test_step_fn_with_loss_fn_or_grad_clipping_raises(extra):
    with pytest.raises(ValueError, match="step_fn: it replaces loss_fn and max_grad_norm"):
        train_model(make_model(), make_data(8), epochs=1, step_fn=plain_step, **extra, **FAST)


def test_step_fn_must_return_a_scalar_tensor():
    with pytest.raises(ValueError, match=r"step_fn: expected a scalar \(0-d\) tensor, got \(16,\)"):
        train_model(make_model(), make_data(), epochs=1, step_fn=lambda m, x, y, o: torch.zeros(x.shape[0]), **FAST)
    with pytest.raises(ValueError, match="step_fn: expected a scalar.*got float"):
        train_model(make_model(), make_data(), epochs=1, step_fn=lambda m, x, y, o: 1.0, **FAST)
    with pytest.raises(TypeError, match="step_fn"):
        train_model(make_model(), make_data(), epochs=1, step_fn="adam", **FAST)


def test_param_groups_have_their_own_lr_and_a_group_stepped_alone_leaves_the_other():
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def step(model, x, y, optimizer):
        seen.append([g["lr"] for g in optimizer.param_groups])
        return step_first_group_only(model, x, y, optimizer)

    hist = train_model(model, make_data(), epochs=1, step_fn=step, param_groups=two_groups(1e-2, 1e-3), **FAST)
    assert seen[0] == [1e-2, 1e-3]
    after = model.state_dict()
    assert not torch.equal(after["1.weight"], before["1.weight"]) and not torch.equal(after["1.bias"], before["1.bias"])
    assert torch.equal(after["4.weight"], before["4.weight"]) and torch.equal(after["4.bias"], before["4.bias"])
    assert hist.last["lr"] == 1e-2  # the record shows group 0's lr


def test_param_groups_lrs_all_decay_each_epoch():
    lrs = []

    def record(model, x, y, optimizer):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        return plain_step(model, x, y, optimizer)

    hist = train_model(make_model(), make_data(32), epochs=3, lr_decay=0.5, step_fn=record,
                       param_groups=two_groups(0.02, 0.004), **FAST)
    per_epoch = lrs[::2]  # 32 samples, batches of 16: two steps per epoch
    assert len(per_epoch) == 3 and all(lrs[2 * e] == lrs[2 * e + 1] for e in range(3))
    assert per_epoch == [pytest.approx([0.02, 0.004]), pytest.approx([0.01, 0.002]), pytest.approx([0.005, 0.001])]
    assert hist.column("lr") == pytest.approx([0.02, 0.01, 0.005])


def test_param_groups_without_step_fn_train_every_group_at_its_lr():
    m1, m2 = make_model(), make_model()
    train_model(m1, make_data(), epochs=2, **FAST)  # lr 1e-2 for all
    train_model(m2, make_data(), epochs=2, param_groups=two_groups(1e-2, 1e-2), **FAST)
    assert states_equal(m1, m2)  # the same lr in two groups is one Adam over all parameters


@pytest.mark.parametrize(
    "groups, exc, match",
    [
        (lambda m: [{"params": list(m[1].parameters())}], ValueError,
         r"cover every trainable parameter.*2 grouped vs 4"),
        (lambda m: [{"params": list(m.parameters())}, {"params": [m[1].weight]}], ValueError,
         "group 1 repeats parameters"),
        (lambda m: [{"params": list(m[1].parameters()), "lr": "1e-3"}, {"params": list(m[4].parameters())}],
         TypeError, "group 0 option 'lr' should be a number"),
        (lambda m: [{"params": list(m.parameters()), "lr": True}], TypeError, "option 'lr' should be a number"),
        (lambda m: [], ValueError, "non-empty list of dicts"),
        (lambda m: [{"lr": 1e-3}], ValueError, "'params' entry"),
        (lambda m: [{"params": []}, {"params": list(m.parameters())}], ValueError, "group 0 must hold at least one"),
        ("groups", TypeError, "param_groups"),
    ],
)
def test_bad_param_groups_raise(groups, exc, match):
    with pytest.raises(exc, match=match):
        train_model(make_model(), make_data(8), epochs=1, param_groups=groups, **FAST)


def test_resume_with_param_groups_and_step_fn_is_bitwise(tmp_path):
    data = make_data()
    extra = dict(step_fn=step_first_group_only, param_groups=two_groups(1e-2, 1e-3))
    full = make_model()
    full_hist = train_model(full, data, epochs=4, **extra, **FAST)
    ckpt = tmp_path / "c.pt"
    with pytest.raises(KeyboardInterrupt):
        train_model(make_model(), data, epochs=4, checkpoint_path=ckpt, callbacks=[Interrupt(2)], **extra, **FAST)
    torch.rand(1000)  # a different global RNG state in the "new session"
    resumed = make_model(init_seed=123)
    hist = train_model(resumed, data, epochs=4, checkpoint_path=ckpt, **extra, **FAST)
    assert states_equal(full, resumed)
    assert hist.column("train_loss") == full_hist.column("train_loss")
    assert hist.column("lr") == full_hist.column("lr")


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(param_groups=two_groups(1e-2, 5e-3)), "param_groups"),  # another lr for group 1
        (dict(param_groups=lambda m: [{"params": list(m.parameters()), "lr": 1e-2}]), "param_groups"),  # one group
        (dict(step_fn=plain_step), "step_fn"),
        (dict(step_fn=None), "step_fn"),
    ],
)
def test_resume_with_other_param_groups_or_step_fn_raises(tmp_path, change, name):
    ckpt = tmp_path / "c.pt"
    base = dict(FAST, epochs=3, step_fn=step_first_group_only, param_groups=two_groups(1e-2, 1e-3))
    with pytest.raises(KeyboardInterrupt):
        train_model(make_model(), make_data(), checkpoint_path=ckpt, callbacks=[Interrupt(1)], **base)
    with pytest.raises(ValueError, match=rf"incompatible training configuration \(.*{name}.*resume=False"):
        train_model(make_model(), make_data(), checkpoint_path=ckpt, **{**base, **change})


# ------------------------------------------------------------------- step-based records


def test_log_points_every_k_steps_and_the_last():
    from poselab.train import log_points

    assert log_points(7, 3) == [3, 6, 7]
    assert log_points(6, 3) == [3, 6]
    assert log_points(2, 5) == [2]
    with pytest.raises(ValueError, match="log_every"):
        log_points(5, 0)
