"""Tests for poselab.methods.ssl_collapse: the easy-hard and dual steps and training."""

import copy
import math

import pytest
import torch
from torch import nn

from poselab.checks import seed_everything
from poselab.data.augment import EASY
from poselab.heatmap_learning import masked_mse_loss, teacher_targets
from poselab.methods.ssl_collapse import (
    SSL_METHODS,
    SSLConfig,
    SSLData,
    ssl_step,
    train_ssl,
    unsupervised_terms,
)
from poselab.models.heatmap import build_heatmap_net

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
SIZE, K = 32, 3


def net(seed=0):
    seed_everything(seed)
    return build_heatmap_net("resnet_tiny", num_keypoints=K, input_size=SIZE)


def tiny_data(n_lab=6, n_unl=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    labelled = (torch.rand(n_lab, 3, SIZE, SIZE, generator=g) * 255).to(torch.uint8)
    unlabelled = (torch.rand(n_unl, 3, SIZE, SIZE, generator=g) * 255).to(torch.uint8)
    keypoints = 6 + 20 * torch.rand(n_lab, K, 2, generator=g)
    visible = torch.ones(n_lab, K, dtype=torch.bool)
    visible[0, 1] = False
    return SSLData(labelled, keypoints, visible, unlabelled)


def config(method, **kw):
    base = dict(method=method, iterations=4, labelled_batch=4, unlabelled_batch=4, log_every=2)
    base.update(kw)
    return SSLConfig(**base)


# ---------------------------------------------------------------------------------- the steps


@pytest.mark.parametrize("method", SSL_METHODS)
def test_ssl_step_runs_and_moves_every_network(method):
    data = tiny_data()
    cfg = config(method)
    nets = [net(0), net(1)][: cfg.num_networks]
    for n in nets:
        n.train()
    before = [copy.deepcopy(n.state_dict()) for n in nets]
    opt = torch.optim.Adam([p for n in nets for p in n.parameters()], lr=1e-3)
    labelled = (data.labelled[:4].float() / 255, data.keypoints[:4], data.visible[:4])
    out = ssl_step(nets, opt, labelled, data.unlabelled[:4].float() / 255, cfg, torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "loss_sup", "loss_unsup", "response"}
    assert math.isfinite(out["loss"]) and out["loss_sup"] > 0
    if method == "supervised":
        assert out["loss_unsup"] == 0 and math.isnan(out["response"])
    else:
        assert out["loss_unsup"] > 0 and 0 <= out["response"]
    for n, state in zip(nets, before):
        assert any(not torch.equal(v, n.state_dict()[k]) for k, v in state.items() if v.is_floating_point())


def _grads(module):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def test_easy_hard_teacher_is_a_stop_gradient():
    """easy_hard's gradient equals that of the same loss with a frozen copy of the network as teacher."""
    unlabelled = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    student = net(0).train()
    frozen = copy.deepcopy(student)
    terms, _ = unsupervised_terms([student], unlabelled, config("easy_hard"), torch.Generator().manual_seed(5))
    terms[0].backward()
    reference = copy.deepcopy(frozen)
    for p in frozen.parameters():
        p.requires_grad_(False)
    # A "dual" pair whose first student is taught by the frozen copy draws the same augmentations first.
    dual_terms, _ = unsupervised_terms([reference, frozen], unlabelled, config("dual"), torch.Generator().manual_seed(5))
    dual_terms[0].backward()
    for a, b in zip(_grads(student), _grads(reference)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_dual_terms_reach_only_their_student():
    unlabelled = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    a, b = net(0).train(), net(1).train()
    terms, heatmaps = unsupervised_terms([a, b], unlabelled, config("dual"), torch.Generator().manual_seed(0))
    assert len(terms) == 2 and heatmaps[0].shape == (4, K, SIZE // 2, SIZE // 2)
    terms[0].backward()
    assert all(p.grad is None for p in b.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in a.parameters())


def test_consistency_gradient_flows_through_both_views():
    """Standard consistency pulls both views: its gradient differs from a detached-target version."""
    unlabelled = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    model = net(0).train()
    terms, _ = unsupervised_terms([model], unlabelled, config("consistency"), torch.Generator().manual_seed(1))
    terms[0].backward()
    both = _grads(model)
    model.zero_grad(set_to_none=True)
    # Same augmentations, target detached: only the second view is pulled.
    from poselab.data.augment import augment

    g = torch.Generator().manual_seed(1)
    u1, a1 = augment(unlabelled, None, EASY, g)
    u2, a2 = augment(unlabelled, None, EASY, g)
    h1, h2 = model(torch.cat([u1, u2])).chunk(2)
    target, valid = teacher_targets(h1.detach(), a1, a2, model.output_stride)
    masked_mse_loss(h2, target, valid).backward()
    one = _grads(model)
    assert terms[0].item() == pytest.approx(masked_mse_loss(h2, target, valid).item(), rel=1e-5)
    assert sum((x - y).abs().sum() for x, y in zip(both, one)) > 1e-3 * sum(x.abs().sum() for x in one)


def test_ssl_step_bad_inputs():
    data = tiny_data()
    opt = torch.optim.Adam(net().parameters())
    labelled = (data.labelled[:2].float() / 255, data.keypoints[:2], data.visible[:2])
    with pytest.raises(ValueError, match="2 network"):
        ssl_step([net()], opt, labelled, data.unlabelled[:2].float() / 255, config("dual"), torch.Generator())
    with pytest.raises(ValueError, match="method"):
        unsupervised_terms([net()], data.unlabelled[:2].float() / 255, config("supervised"), torch.Generator())


# -------------------------------------------------------------------------------------- training


def test_train_ssl_records_and_is_reproducible(tmp_path):
    data = tiny_data()
    evals = {"test": (data.labelled, data.keypoints, data.visible), "unlabelled": (data.unlabelled,)}
    start = net(0)
    nets, history = train_ssl([start], data, config("easy_hard"), eval_sets=evals, device="cpu", seed=3,
                              progress=False)
    assert [r["iteration"] for r in history.records] == [0, 2, 4]
    assert {"loss", "loss_sup", "loss_unsup", "response", "lr", "test/pck@0.05", "test/response",
            "unlabelled/response"} <= set(history.records[-1])
    assert not nets[0].training
    # The initial network is not modified.
    assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), net(0).state_dict().values()))
    nets2, history2 = train_ssl([net(0)], data, config("easy_hard"), eval_sets=evals, device="cpu", seed=3,
                                progress=False)
    assert history2.records == history.records
    assert all(torch.equal(a, b) for a, b in zip(nets[0].state_dict().values(), nets2[0].state_dict().values()))


def test_train_ssl_checkpoint(tmp_path):
    data = tiny_data()
    path = tmp_path / "run.pt"
    nets, history = train_ssl([net(0), net(1)], data, config("dual"), checkpoint_path=path, progress=False)
    assert path.exists() and "net2/test/response" not in history.records[-1]
    again, history2 = train_ssl([net(0), net(1)], data, config("dual"), checkpoint_path=path, progress=False)
    assert history2.records == history.records
    assert all(torch.equal(a, b) for a, b in zip(nets[1].state_dict().values(), again[1].state_dict().values()))
    with pytest.raises(ValueError, match="incompatible training configuration"):
        train_ssl([net(0), net(1)], data, config("dual", lr=3e-4), checkpoint_path=path, progress=False)


def _interrupted_at_step(monkeypatch, stop_at, *args, **kwargs):
    """Run ``train_ssl`` until optimisation step ``stop_at`` (1-based) raises, like a Ctrl-C."""
    import poselab.methods.ssl_collapse as S

    calls, real = [], S.ssl_step

    def step(*a, **k):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(S, "ssl_step", step)
    with pytest.raises(KeyboardInterrupt):
        train_ssl(*args, **kwargs)
    monkeypatch.setattr(S, "ssl_step", real)


def test_train_ssl_resume_after_an_interruption_is_bitwise(tmp_path, monkeypatch):
    from poselab.checkpoint import read_state
    from poselab.engine import CHECKPOINT_FORMAT

    data = tiny_data()
    evals = {"test": (data.labelled, data.keypoints, data.visible)}
    kw = dict(eval_sets=evals, device="cpu", seed=3, progress=False)
    full, full_history = train_ssl([net(0), net(1)], data, config("dual", iterations=6), **kw)
    path = tmp_path / "run.safetensors"
    _interrupted_at_step(monkeypatch, 4, [net(0), net(1)], data, config("dual", iterations=6), checkpoint_path=path,
                         **kw)
    state, _ = read_state(path, format=CHECKPOINT_FORMAT)
    assert state["step"] == 2 and not list(tmp_path.glob("*.tmp"))
    torch.rand(100)  # another global RNG state in the "new session"
    with pytest.raises(ValueError, match="initial: .* in the checkpoint vs .* now"):  # other starting networks
        train_ssl([net(5), net(6)], data, config("dual", iterations=6), checkpoint_path=path, **kw)
    resumed, history = train_ssl([net(0), net(1)], data, config("dual", iterations=6), checkpoint_path=path, **kw)
    assert history.records == full_history.records
    for a, b in zip(full, resumed):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    state, _ = read_state(path, format=CHECKPOINT_FORMAT)  # the file holds exactly the final state
    assert state["step"] == 6 and state["history"]["records"] == history.records
    for i, trained in enumerate(resumed):
        for name, value in trained.state_dict().items():
            assert torch.equal(state["modules"][f"net{i}"][name], value), name


def _checkpoint_after_two_steps(tmp_path, **kw):
    path = tmp_path / "run.safetensors"
    data = tiny_data()
    train_ssl([net(0)], data, config("easy_hard", iterations=2), checkpoint_path=path, progress=False, **kw)
    return path, data


def test_train_ssl_refuses_a_checkpoint_of_another_run_and_says_how_to_start_over(tmp_path):
    path, data = _checkpoint_after_two_steps(tmp_path)
    run = lambda nets, d, cfg, **kw: train_ssl(nets, d, cfg, checkpoint_path=path, progress=False, **kw)  # noqa: E731
    cases = [
        (dict(cfg=config("easy_hard", iterations=2, sigma=2.0)), r"config/sigma: 1\.5 in the checkpoint vs 2\.0 now"),
        (dict(cfg=config("easy_hard", iterations=2, hard=EASY)), r"config/hard/"),
        (dict(seed=1), r"seed: 0 in the checkpoint vs 1 now"),
    ]
    changed = tiny_data()
    changed.unlabelled[5, 1, 7, 9] ^= 1  # one bit of one pixel
    cases.append((dict(d=changed), r"data/unlabelled: "))
    momentum = net(0)
    next(m for m in momentum.modules() if isinstance(m, nn.BatchNorm2d)).momentum = 0.2
    cases.append((dict(nets=[momentum]), r"task/net0/.*momentum: 0\.1 in the checkpoint vs 0\.2 now"))
    cases.append((dict(eval_sets={"test": (data.unlabelled,)}), r"eval_sets/test: '<absent>' in the checkpoint"))
    for change, match in cases:
        args = dict(nets=[net(0)], d=data, cfg=config("easy_hard", iterations=2)) | change
        with pytest.raises(ValueError, match=rf"run\.safetensors' was written by an incompatible training configuration \(.*{match}.*resume=False "
                                             r"\(on the command line: --fresh\), or use another checkpoint folder"):
            run(args.pop("nets"), args.pop("d"), args.pop("cfg"), **args)
    _, history = run([net(0)], data, config("easy_hard", iterations=2))  # the same run: returns at once
    assert history.records[-1]["iteration"] == 2
    fresh, history = run([net(0)], data, config("easy_hard", iterations=2, sigma=2.0), resume=False)
    assert history.records[-1]["iteration"] == 2  # a fresh run overwrote the checkpoint
    run([net(0)], data, config("easy_hard", iterations=2, sigma=2.0))


class _Payload:
    """Unpickling this runs ``os.system("touch <marker>")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_train_ssl_never_unpickles_a_checkpoint(tmp_path, writer):
    import pickle

    path, marker = tmp_path / "run.pt", tmp_path / "marker"
    payload = {"fingerprint": None, "networks": [_Payload(marker)], "iteration": 0}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ValueError, match=r"checkpoint '.*run\.pt' could not be read \(not a safetensors file.*"
                                         r"delete it, or start over with resume=False"):
        train_ssl([net(0)], tiny_data(), config("easy_hard"), checkpoint_path=path, progress=False)
    assert not marker.exists()


def test_train_ssl_damaged_checkpoints_give_clear_errors(tmp_path):
    path, data = _checkpoint_after_two_steps(tmp_path)
    good = path.read_bytes()
    run = lambda: train_ssl([net(0)], data, config("easy_hard", iterations=2), checkpoint_path=path,  # noqa: E731
                            progress=False)
    path.write_bytes(good[: len(good) - 100])  # truncated
    with pytest.raises(ValueError, match=r"run\.safetensors' could not be read \(not a safetensors file or truncated"):
        run()
    damaged = bytearray(good)
    damaged[-5] ^= 0xFF  # one byte of the last tensor
    path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"do not match their SHA-256: the file is damaged\); delete it"):
        run()
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="could not be read"):
        run()


def test_train_ssl_checkpoint_below_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "ckpts").write_text("a file")
    with pytest.raises(ValueError, match=r"checkpoint_path: .*ckpts.* is a file, not a folder"):
        train_ssl([net(0)], tiny_data(), config("easy_hard"), checkpoint_path=tmp_path / "ckpts" / "r.safetensors",
                  progress=False)
    with pytest.raises(TypeError, match="resume: expected a bool"):
        train_ssl([net(0)], tiny_data(), config("easy_hard"), resume="no", progress=False)


def test_lr_schedule():
    cfg = SSLConfig(iterations=100, lr=1e-3, lr_milestones=(0.5, 0.9))
    assert cfg.lr_at(0) == 1e-3 and cfg.lr_at(50) == pytest.approx(1e-4) and cfg.lr_at(95) == pytest.approx(1e-5)


def test_bad_configs_and_data():
    with pytest.raises(ValueError, match="method"):
        SSLConfig(method="mean_teacher")
    with pytest.raises(ValueError, match="lr_milestones"):
        SSLConfig(lr_milestones=(1.5,))
    with pytest.raises(TypeError, match="easy"):
        SSLConfig(easy="easy")
    d = tiny_data()
    with pytest.raises(ValueError, match="keypoints"):
        SSLData(d.labelled, d.keypoints[:2], d.visible, d.unlabelled)
    with pytest.raises(TypeError, match="visible"):
        SSLData(d.labelled, d.keypoints, d.visible.float(), d.unlabelled)
    with pytest.raises(ValueError, match="unlabelled"):
        SSLData(d.labelled, d.keypoints, d.visible, d.unlabelled[:, :, :16])
    with pytest.raises(ValueError, match="nn.Module"):
        train_ssl([net()], d, config("dual"), progress=False)
    with pytest.raises(TypeError, match="SSLData"):
        train_ssl([net()], (d.labelled,), config("supervised"), progress=False)


@CUDA
def test_step_on_cuda():
    data = tiny_data()
    nets, history = train_ssl([net(0)], data, config("easy_hard"), device="cuda", progress=False,
                              eval_sets={"u": (data.unlabelled,)})
    assert next(nets[0].parameters()).is_cuda and math.isfinite(history.records[-1]["loss"])
