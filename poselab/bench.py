"""Performance ratios printed by ``python -m poselab bench``.

Each entry reports a throughput or a time and, where it measures a design decision, a
**ratio** against the alternative (for example batched forward kinematics against a
per-frame loop). Ratios are what to compare across machines and commits; absolute times
depend on the machine. Timings are medians over ``repeats`` runs after one warm-up run.
Tests check the structure of the report only: timing asserts would be flaky. An entry may carry
a ``"target"`` string, the ratio its design aims for (e.g. ``"<= 2x"``): a note to read the ratio
against, not a check.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from poselab.checks import resolve_device


def _seconds(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of one ``fn()``, synchronising CUDA before and after (kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _median_seconds(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up), synchronising CUDA."""
    fn()
    return statistics.median(_seconds(fn, device) for _ in range(repeats))


def bench_forward_kinematics(device: torch.device, repeats: int, clip: str = "135_02") -> dict[str, float]:
    """Forward kinematics of one clip: batched over frames vs one call per frame."""
    from poselab.data import mocap

    motion = mocap.load_clip(clip)
    root, rot, off = (t.to(device) for t in (motion.root_positions, motion.local_rotations, motion.offsets))
    frames = min(motion.num_frames, 200)  # the loop is slow: time it on a prefix

    def batched():
        mocap.forward_kinematics(root, rot, off, motion.parents)

    def per_frame():
        for i in range(frames):
            mocap.forward_kinematics(root[i], rot[i], off, motion.parents)

    t_batched = _median_seconds(batched, repeats, device) / motion.num_frames
    t_loop = _median_seconds(per_frame, max(1, repeats // 2), device) / frames
    return {"frames_per_s": 1.0 / t_batched, "ratio_vs_per_frame_loop": t_loop / t_batched}


def bench_bvh_parsing(repeats: int, clip: str = "135_02") -> dict[str, float]:
    """Reading and checking one BVH file (CPU): frames per second."""
    from poselab.data import mocap

    path = mocap.mocap_dir() / f"{clip}.bvh"
    seconds = _median_seconds(lambda: mocap.load_bvh(path), repeats, torch.device("cpu"))
    frames = mocap.load_clip(clip).num_frames
    return {"frames_per_s": frames / seconds}


def bench_lifting_data(repeats: int, profile: str = "fast") -> dict[str, float]:
    """Building the three lifting splits from loaded clips (projection, DAR, splits): samples per second."""
    from poselab.data import lifting

    lifting.build_lifting_splits(profile)  # load the clips once; time only the build

    def build():
        lifting.clear_lifting_cache()
        return lifting.build_lifting_splits(profile)

    seconds = _median_seconds(build, repeats, torch.device("cpu"))
    samples = sum(len(s) for s in lifting.build_lifting_splits(profile).values())
    return {"samples_per_s": samples / seconds, "samples": float(samples)}


def bench_lifter_steps(device: torch.device, repeats: int, batch_size: int = 256) -> dict[str, dict[str, float]]:
    """One training step (forward, MPJPE loss, backward, Adam) per backbone; ratio to the MLP's step."""
    from poselab.models.lifting import LIFTERS, build_lifter

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 17, 2, generator=gen).to(device)
    y = torch.randn(batch_size, 17, 3, generator=gen).to(device)
    out: dict[str, dict[str, float]] = {}
    for name in LIFTERS:
        torch.manual_seed(0)
        model = build_lifter(name).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = (model(x) - y).norm(dim=-1).mean()
            loss.backward()
            opt.step()

        out[name] = {"step_ms": 1000 * _median_seconds(step, repeats, device), "parameters": float(model.num_parameters)}
    for name in LIFTERS:
        out[name]["ratio_vs_mlp"] = out[name]["step_ms"] / out["mlp"]["step_ms"]
    return out


def training_step_seconds(models: dict[str, torch.nn.Module], inputs: torch.Tensor, targets: torch.Tensor,
                          loss_fn: Callable, repeats: int, device: str | torch.device = "auto") -> dict[str, float]:
    """Median wall time (seconds) of one training step (forward, ``loss_fn``, backward, Adam) per model.

    Within each repeat the models take one step each, in turn, so that a change of machine load
    hits all of them alike: their *ratios* stay meaningful on a busy machine. The models are
    trained in place (pass fresh copies). One warm-up step each comes first.
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats: expected an int >= 1, got {repeats!r}")
    if not models:
        raise ValueError("models: expected at least one model, got none")
    device = resolve_device(device)
    x, y = inputs.to(device), targets.to(device)
    steps = {}
    for name, model in models.items():
        model.to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            loss_fn(model, x, y).backward()
            opt.step()
        steps[name] = step
    return _interleaved_seconds(steps, repeats, device)


def _interleaved_seconds(steps: dict[str, Callable[[], Any]], repeats: int,
                         device: torch.device) -> dict[str, float]:
    """Median wall time (seconds) of each ``steps[name]()`` over ``repeats`` rounds, after one
    warm-up round; within a round every step runs once, in turn (see :func:`training_step_seconds`)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for repeat in range(repeats + 1):
        for name, step in steps.items():
            seconds = _seconds(step, device)
            if repeat:  # the first round is the warm-up
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_ensemble_step(device: torch.device, repeats: int, num_heads: int = 5,
                        batch_size: int = 256) -> dict[str, float]:
    """Training step of an M-head ASM ensemble on one encoder vs one network vs M independent networks.

    All use the default MLP lifter; the M independent networks are stepped one after the other
    (what training M separate models costs, without an ensemble's shared encoder).
    """
    from poselab.methods.flat_ensemble import FlatEnsemble, ensemble_loss
    from poselab.models.lifting import build_lifter

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 17, 2, generator=gen)
    y = torch.randn(batch_size, 17, 3, generator=gen)
    torch.manual_seed(0)
    models = {"single": build_lifter("mlp"), "ensemble": FlatEnsemble(build_lifter("mlp"), num_heads=num_heads),
              **{f"independent_{i}": build_lifter("mlp") for i in range(num_heads)}}
    t = training_step_seconds(models, x, y, ensemble_loss, max(repeats, 3), device)
    independent = sum(t[f"independent_{i}"] for i in range(num_heads))
    return {"num_heads": float(num_heads), "single_ms": 1000 * t["single"], "ensemble_ms": 1000 * t["ensemble"],
            "independent_ms": 1000 * independent, "ensemble_ratio_vs_single": t["ensemble"] / t["single"],
            "independent_ratio_vs_single": independent / t["single"]}


def bench_seal_step(device: str | torch.device, repeats: int, batch_size: int = 256,
                    task_nets: tuple[str, ...] = ("mlp", "gcn")) -> dict[str, dict[str, float]]:
    """One SEAL-dynamic training step against one plain task-net step, per task-net.

    * plain: forward, :func:`poselab.methods.seal.joint_mse_loss`, backward, Adam;
    * SEAL: :func:`poselab.methods.seal.seal_step` on a ``SealModel(lifter, EnergyNet(17),
      objective="margin")`` with Adam over ``model.param_groups(1e-3, 1e-3)``: a loss-net step
      (one energy pass over the ``2B`` ground truths and predictions, backward, Adam) then a
      task-net step (one energy pass through the frozen loss-net, backward into the lifter, Adam).

    The loss-net's cost does not depend on the task-net, so the ratio is largest for the cheapest
    task-net (the MLP). Both models start from the same lifter weights and take random
    ``(batch_size, 17, 2)`` inputs and root-relative ``(batch_size, 17, 3)`` targets (metres); the
    two steps alternate within each repeat (as in :func:`training_step_seconds`), so machine load
    hits both alike.

    Returns:
        ``{task_net: {"plain_ms", "seal_ms", "ratio"}}``: median milliseconds per step and
        seal / plain (SEAL's training-time overhead).
    """
    import copy

    from poselab.methods import seal
    from poselab.models.lifting import build_lifter

    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats: expected an int >= 1, got {repeats!r}")
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 17, 2, generator=gen).to(device)
    y = 0.3 * torch.randn(batch_size, 17, 3, generator=gen)
    y = (y - y[:, :1]).to(device)
    out = {}
    for name in task_nets:
        torch.manual_seed(0)
        plain = build_lifter(name).to(device).train()
        model = seal.SealModel(copy.deepcopy(plain), seal.EnergyNet(17), objective="margin", alpha=1.0)
        model.to(device).train()
        plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
        seal_opt = torch.optim.Adam(model.param_groups(1e-3, 1e-3))

        def plain_step(plain=plain, plain_opt=plain_opt):
            plain_opt.zero_grad(set_to_none=True)
            seal.joint_mse_loss(plain, x, y).backward()
            plain_opt.step()

        def seal_step(model=model, seal_opt=seal_opt):
            seal.seal_step(model, x, y, seal_opt)

        t = _interleaved_seconds({"plain": plain_step, "seal": seal_step}, max(repeats, 3), device)
        out[name] = {"plain_ms": 1000 * t["plain"], "seal_ms": 1000 * t["seal"], "ratio": t["seal"] / t["plain"]}
    return out


def bench_hessian_vector_product(device: torch.device, repeats: int, batch_size: int = 1024) -> dict[str, float]:
    """One Hessian-vector product of the MPJPE training loss vs one gradient (default MLP lifter, eval mode)."""
    from poselab import landscape
    from poselab.models.lifting import build_lifter
    from poselab.train import mpjpe_loss

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 17, 2, generator=gen).to(device)
    y = torch.randn(batch_size, 17, 3, generator=gen).to(device)
    y = y - y[:, :1]
    torch.manual_seed(0)
    model = build_lifter("mlp").to(device).eval()
    vector = landscape.random_direction(model, generator=gen, normalization="none")

    def gradient():
        model.zero_grad(set_to_none=True)
        mpjpe_loss(model, x, y).backward()

    def hvp():
        landscape.hessian_vector_product(model, [(x, y)], vector)

    t_grad = _median_seconds(gradient, repeats, device)
    t_hvp = _median_seconds(hvp, repeats, device)
    return {"gradient_ms": 1000 * t_grad, "hvp_ms": 1000 * t_hvp, "hvp_ratio_vs_gradient": t_hvp / t_grad}


def run_benchmarks(device: str = "auto", repeats: int = 5) -> dict[str, Any]:
    """Run every benchmark; return a JSON-serialisable report."""
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats: expected an int >= 1, got {repeats!r}")
    dev = resolve_device(device)
    return {
        "device": str(dev),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "entries": {
            "bvh_parsing": bench_bvh_parsing(repeats),
            "forward_kinematics": bench_forward_kinematics(dev, repeats),
            "lifting_data_build": bench_lifting_data(repeats),
            "lifter_train_step": bench_lifter_steps(dev, repeats),
            "ensemble_train_step": bench_ensemble_step(dev, repeats),
            "hessian_vector_product": bench_hessian_vector_product(dev, repeats),
            "seal_train_step": {**bench_seal_step(dev, repeats), "target": "<= 2x"},
        },
    }
