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


def bench_rendering(device: str | torch.device, repeats: int, count: int = 32,
                    sizes: tuple[int, ...] = (64, 128), look: str = "realistic") -> dict[str, float]:
    """Rendering person crops with :func:`poselab.data.images.render_people`: images per second per size.

    Each call renders ``count`` crops of ``look`` from the train clips with a freshly seeded
    generator (the same work every repeat). The shares say where a call's time goes: one Anny
    forward of the ``count`` bodies (the same at every size) and one supersampled
    :func:`poselab.data.render.render_mesh` of those meshes (rasterise and shade) at each size;
    the rest is the clip-to-Anny pose mapping, cameras, looks, compositing and labels.

    Returns:
        ``{"images_per_s_{S}px", "anny_share_{S}px", "render_share_{S}px"}`` for each ``S`` in ``sizes``.
    """
    from poselab.data import images
    from poselab.data.body import body_model
    from poselab.data.render import render_mesh

    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats: expected an int >= 1, got {repeats!r}")
    device = resolve_device(device)
    clips = images.image_split_clips("train")
    body = body_model(device)
    out: dict[str, float] = {}
    for size in sizes:
        def render(size=size):
            return images.render_people(clips, count, look, size, torch.Generator().manual_seed(0), device)

        people = render()
        pose = torch.cat([people.pose, torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(count, 31, 1, 4)], dim=2)
        pose, phenotypes = pose.to(device), people.phenotypes.to(device)
        rotation, translation = people.rotation.to(device), people.translation.to(device)
        focal, center = people.focal.to(device), people.center.to(device)
        vertices = torch.einsum("bij,bnj->bni", rotation, body(pose, phenotypes).vertices) + translation[:, None]
        colours = torch.full_like(vertices, 0.5)
        light = torch.tensor([0.0, 0.0, 1.0], device=device).expand(count, 3)

        def anny():
            body(pose, phenotypes)

        def raster():
            render_mesh(vertices, body.faces, focal, center, (size, size), colours, light, 0.4, 0.6,
                        supersample=images.SUPERSAMPLE, cull_backfaces=True)

        t = _interleaved_seconds({"all": render, "anny": anny, "render": raster}, repeats, device)
        out[f"images_per_s_{size}px"] = count / t["all"]
        out[f"anny_share_{size}px"] = t["anny"] / t["all"]
        out[f"render_share_{size}px"] = t["render"] / t["all"]
    return out


def _random_heatmap_batches(labelled: int, unlabelled: int, size: int, device: torch.device):
    """Seeded random images in [0, 1]: ``(images, keypoints (px, inside the crop), visible)`` for
    ``labelled`` labelled images (17 keypoints, all visible) and ``(unlabelled, 3, size, size)`` images."""
    gen = torch.Generator().manual_seed(0)
    labelled_batch = (torch.rand(labelled, 3, size, size, generator=gen).to(device),
                      (size / 8 + 0.75 * size * torch.rand(labelled, 17, 2, generator=gen)).to(device),
                      torch.ones(labelled, 17, dtype=torch.bool, device=device))
    return labelled_batch, torch.rand(unlabelled, 3, size, size, generator=gen).to(device)


def bench_heatmap_steps(device: str | torch.device, repeats: int, size: int = 64, labelled_batch: int = 32,
                        unlabelled_batch: int = 32, net: str = "resnet_tiny",
                        methods: tuple[str, ...] = ("supervised", "consistency", "easy_hard", "dual")
                        ) -> dict[str, dict[str, float]]:
    """One semi-supervised heatmap training step per method (:func:`poselab.methods.ssl_collapse.ssl_step`).

    Every method trains ``net`` (two copies for ``dual``) with Adam on the same random
    ``(labelled_batch, 3, size, size)`` labelled images (random keypoints, all visible) and
    ``(unlabelled_batch, 3, size, size)`` unlabelled images; augmentations are drawn as in
    training (easy for labelled images, easy and hard views for unlabelled ones). The steps
    alternate within each repeat (:func:`training_step_seconds`), so machine load hits all alike.

    Compute per step, in network forward passes over a batch (a backward costs about two):
    ``supervised`` 3 (labelled), ``easy_hard`` 7 (labelled 3, teacher's easy view 1, student's
    hard view 3), ``dual`` 14 (``easy_hard`` for each of its two networks); augmentation adds to
    the unlabelled methods.

    The target "a dual-network step at most 2.2x a supervised step" is read against the
    one-network semi-supervised step (``easy_hard``): two networks should cost about twice one,
    plus little overhead. Against a purely supervised step the floor is 14 / 3 = 4.7x by the
    count above, whatever the implementation, so that ratio is reported but not targeted.

    Returns:
        ``{method: {"step_ms", "ratio_vs_supervised"}}``: median milliseconds per step and the
        ratio to a supervised step; ``dual`` also has ``ratio_vs_easy_hard`` (two networks
        against one) when ``easy_hard`` is timed.
    """
    from poselab.methods.ssl_collapse import SSLConfig, ssl_step
    from poselab.models.heatmap import build_heatmap_net

    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats: expected an int >= 1, got {repeats!r}")
    device = resolve_device(device)
    labelled, unlabelled = _random_heatmap_batches(labelled_batch, unlabelled_batch, size, device)
    steps = {}
    for method in ("supervised", *[m for m in methods if m != "supervised"]):
        config = SSLConfig(method=method, labelled_batch=labelled_batch, unlabelled_batch=unlabelled_batch)
        torch.manual_seed(0)
        nets = [build_heatmap_net(net, input_size=size).to(device).train() for _ in range(config.num_networks)]
        optimizer = torch.optim.Adam([p for n in nets for p in n.parameters()], lr=config.lr)
        step_gen = torch.Generator().manual_seed(1)

        def step(nets=nets, optimizer=optimizer, config=config, step_gen=step_gen):
            ssl_step(nets, optimizer, labelled, unlabelled, config, step_gen)
        steps[method] = step
    t = _interleaved_seconds(steps, max(repeats, 3), device)
    out = {m: {"step_ms": 1000 * t[m], "ratio_vs_supervised": t[m] / t["supervised"]} for m in steps}
    if "dual" in out and "easy_hard" in out:
        out["dual"]["ratio_vs_easy_hard"] = t["dual"] / t["easy_hard"]
    return out


def bench_hamipose_step(device: str | torch.device, repeats: int, size: int = 64, batch: int = 16,
                        net: str = "resnet_tiny") -> dict[str, float]:
    """A HamiPose step against a plain Mean Teacher step.

    All three train ``net`` on the same random ``(batch, 3, size, size)`` source images (random
    keypoints) and target images, with the same views:

    * ``plain``: Mean Teacher as usually written: ``(L_s + lambda L_t).backward()``, an Adam
      step, the teacher's EMA update (the paper's "plain back-propagation");
    * ``mean_teacher``: :func:`poselab.methods.hamipose.hamipose_step` without decomposition
      (it still measures the per-keypoint cosines for the conflict diagnostic);
    * ``hamipose``: the per-keypoint decomposition and gate, and the Hamiltonian optimiser.

    Beyond ``plain``, a HamiPose step adds two gradients with respect to the heatmaps (through the
    loss only), two einsums (the pull-backs), a few ``(K,)`` operations and the integrator's
    update; the network is traversed once forward and once backward in all three.

    Returns:
        ``{"plain_ms", "mean_teacher_ms", "hamipose_ms", "ratio"}``: median milliseconds per step
        and ``hamipose / plain``.
    """
    import copy

    from poselab.data.augment import augment
    from poselab.methods.hamipose import HamiPoseConfig, KeypointMetric, ema_update, hamipose_step
    from poselab.heatmap_learning import joints_mse_loss, masked_mse_loss, supervised_targets, teacher_targets
    from poselab.models.heatmap import build_heatmap_net
    from poselab.optim import build_optimizer

    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats: expected an int >= 1, got {repeats!r}")
    device = resolve_device(device)
    source, target = _random_heatmap_batches(batch, batch, size, device)

    def networks():
        torch.manual_seed(0)
        student = build_heatmap_net(net, input_size=size).to(device).train()
        return student, copy.deepcopy(student).requires_grad_(False)

    steps = {}
    config = HamiPoseConfig(source_batch=batch, target_batch=batch, decomposition="none", optimizer="adam")
    student, teacher = networks()
    optimizer = build_optimizer("adam", student.parameters())
    plain_gen = torch.Generator().manual_seed(1)
    stride = student.output_stride

    def plain_step():
        x_s, y_s, vis_s = supervised_targets(*source, config.source_aug, config.sigma, stride,
                                             (size // stride, size // stride), plain_gen)
        u_e, a_e = augment(target, None, config.teacher_aug, plain_gen)
        u_h, a_h = augment(target, None, config.student_aug, plain_gen)
        teacher.eval()
        with torch.no_grad():
            y_t, valid = teacher_targets(teacher(u_e), a_e, a_h, stride)
        h_s, h_t = student(torch.cat([x_s, u_h])).split([batch, batch])
        loss = joints_mse_loss(h_s, y_s, vis_s) + config.target_weight * masked_mse_loss(h_t, y_t, valid)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema_update(teacher, student, config.ema_decay)
    steps["plain"] = plain_step
    for name, overrides in {"mean_teacher": dict(decomposition="none", optimizer="adam"),
                            "hamipose": dict(decomposition="keypoint", optimizer="hamiltonian")}.items():
        cfg = HamiPoseConfig(source_batch=batch, target_batch=batch, **overrides)
        s_net, t_net = networks()
        opt = build_optimizer(cfg.optimizer, s_net.parameters())
        metric = KeypointMetric(s_net.final, cfg.metric_decay, cfg.metric_eps)
        step_gen = torch.Generator().manual_seed(1)

        def step(student=s_net, teacher=t_net, optimizer=opt, metric=metric, config=cfg, step_gen=step_gen):
            hamipose_step(student, teacher, optimizer, metric, source, target, config, 1000, step_gen)
        steps[name] = step
    t = _interleaved_seconds(steps, max(repeats, 3), device)
    return {"plain_ms": 1000 * t["plain"], "mean_teacher_ms": 1000 * t["mean_teacher"],
            "hamipose_ms": 1000 * t["hamipose"], "ratio": t["hamipose"] / t["plain"]}


def _random_mesh_targets(batch: int, size: int, body, generator: torch.Generator):
    """Random but valid :class:`~poselab.methods.meta_tto.MeshTargets` of ``batch`` crops of ``size`` px.

    Bone rotations ``N(0, 0.3 rad)`` rotation vectors, phenotypes in [0.3, 0.7], a crop camera near the
    network's initial one, focal ``1.5 S``; joints by forward kinematics, their projections, detections
    with 2 % jitter, all visible. Cheaper than rendering crops, and the step costs the same.
    """
    import roma

    from poselab.data.cameras import project_points
    from poselab.methods.meta_tto import MeshTargets
    from poselab.models.mesh import (NUM_BONES, NUM_PHENOTYPES, MeshPrediction, camera_translation,
                                     matrix_to_rotation_6d, rotation_6d_to_matrix, to_pose_parameters)

    like = dict(dtype=body.dtype, device=body.device)
    rotvec = 0.3 * torch.randn(batch, NUM_BONES, 3, generator=generator, dtype=torch.float64)
    rotation6d = matrix_to_rotation_6d(roma.rotvec_to_rotmat(rotvec)).to(**like)
    phenotypes = (0.3 + 0.4 * torch.rand(batch, NUM_PHENOTYPES, generator=generator)).to(**like)
    camera = torch.cat([1 + 0.2 * torch.rand(batch, 1, generator=generator),
                        0.1 * torch.randn(batch, 2, generator=generator)], dim=1).to(**like)
    pred = MeshPrediction(rotation6d, rotation_6d_to_matrix(rotation6d), phenotypes, camera)
    focal = torch.full((batch, 2), 1.5 * size, **like)
    center = torch.full((batch, 2), size / 2, **like)
    pose = to_pose_parameters(pred, camera_translation(camera, focal, center, size))
    with torch.no_grad():
        joints = body.skeleton(pose, phenotypes).joints
    joints2d = project_points(joints, focal[:, None], center[:, None])
    detected = joints2d + (0.02 * size * torch.randn(joints2d.shape, generator=generator)).to(**like)
    visible = torch.ones(batch, joints.shape[1], dtype=torch.bool, device=body.device)
    return MeshTargets(pose, phenotypes, joints, joints2d, detected, visible, focal, center, size)


def bench_meta_step(device: str | torch.device, repeats: int, batch: int = 32, net: str = "mesh_tiny",
                    size: int = 64) -> dict[str, float]:
    """One meta-training step of the dual-network TTO method, vectorised over samples vs a Python loop.

    Both steps compute :func:`poselab.methods.meta_tto.meta_loss` (vectorised: ``vmap`` over per-sample
    weight copies) or :func:`~poselab.methods.meta_tto.meta_loss_loop` (one ``functional_call`` and one
    ``autograd.grad`` per sample) and its backward, second order, with the auxiliary network (one inner
    step, norm layers frozen: :class:`~poselab.methods.meta_tto.MetaTTOConfig`'s defaults), for ``net``
    (and its auxiliary copy) on random ``(batch, 3, size, size)`` images and random but valid targets
    (:func:`_random_mesh_targets`; the cost does not depend on the pixels). The two alternate within
    each repeat (:func:`training_step_seconds`). Their gradients agree (``tests/test_meta_tto.py``).

    Returns:
        ``{"vectorised_ms", "loop_ms", "speedup"}``: median milliseconds per step and loop / vectorised.
    """
    from poselab.data.body import body_model
    from poselab.methods.meta_tto import MetaTTOConfig, meta_loss, meta_loss_loop
    from poselab.models.mesh import build_mesh_regressor

    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats: expected an int >= 1, got {repeats!r}")
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(0)
    body = body_model(device)
    targets = _random_mesh_targets(batch, size, body, gen)
    images = torch.rand(batch, 3, size, size, generator=gen).to(device)
    torch.manual_seed(0)
    network = build_mesh_regressor(net, input_size=size).to(device).train()
    aux = build_mesh_regressor(net, input_size=size).to(device).train()
    config = MetaTTOConfig(batch=batch, use_meta=True, use_aux=True, first_order=False)

    def step(loss_fn):
        network.zero_grad(set_to_none=True)
        aux.zero_grad(set_to_none=True)
        loss_fn(network, aux, images, targets, body, config).backward()

    t = _interleaved_seconds({"vectorised": lambda: step(meta_loss), "loop": lambda: step(meta_loss_loop)},
                             repeats, device)
    return {"vectorised_ms": 1000 * t["vectorised"], "loop_ms": 1000 * t["loop"],
            "speedup": t["loop"] / t["vectorised"]}


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
            "image_rendering": bench_rendering(dev, repeats),
            "heatmap_train_step": {**bench_heatmap_steps(dev, repeats),
                                   "target": "dual <= 2.2x easy_hard (ratio_vs_easy_hard)"},
            "hamipose_train_step": {**bench_hamipose_step(dev, repeats), "target": "<= 1.3x plain"},
            "meta_tto_train_step": {**bench_meta_step(dev, repeats), "target": ">= 5x loop (speedup)"},
        },
    }
