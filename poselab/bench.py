"""Performance ratios printed by ``python -m poselab bench``.

Each entry reports a throughput or a time and, where it measures a design decision, a
**ratio** against the alternative (for example batched forward kinematics against a
per-frame loop). Ratios are what to compare across machines and commits; absolute times
depend on the machine. Timings are medians over ``repeats`` runs after one warm-up run.
Tests check the structure of the report only: timing asserts would be flaky.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from poselab.checks import resolve_device


def _median_seconds(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up), synchronising CUDA."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
        },
    }
