"""Experiment ``meta_tto`` (chapter 4): test-time optimisation inside training, with dual networks.

"Incorporating Test-Time Optimization into Training with Dual Networks for Human Mesh Recovery"
(Nie et al., NeurIPS 2024) on rendered person crops (:mod:`poselab.data.images`) with Anny bodies:
training crops of the ``synthetic`` look; test crops of held-out subjects in the same look
(*in-domain*) and in the ``realistic`` look (*cross-domain*). Detected 2D keypoints are the true
2D joints with simulated detector errors (:class:`poselab.methods.meta_tto.DetectorNoise`).

Protocol. A regressor (:mod:`poselab.models.mesh`) is trained by plain regression for
``pretrain`` steps from the mean training pose; three runs then continue from it for
``iterations`` steps with the same batches:

* ``regression``: more plain regression (the baseline, and EFT's starting model);
* ``meta``: meta-learning through a per-sample test-time step, without the auxiliary network;
* ``meta_aux``: the same with the auxiliary network (a copy of the pre-trained regressor, trained
  too) providing pseudo targets in the test-time loss: the full method.

Every model is then evaluated on both test sets after ``k = 0 .. max_steps`` steps of test-time
optimisation (:func:`poselab.methods.meta_tto.test_time_optimise`, SGD, ``tto_lr``): step 0 of
``regression`` is "regression only", step ``tto_steps`` of ``regression`` is EFT, step
``tto_steps`` of ``meta`` and ``meta_aux`` the two meta-learning rows of the paper's ablation.
The in-domain curves are run a second time against the detections of a noisier detector
(:data:`NOISY_DETECTOR`), where EFT's overfitting to the keypoints can show.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path

from poselab.checks import check_profile, resolve_device, seed_everything
from poselab.data.body import body_model
from poselab.data.images import render_image_set
from poselab.methods import meta_tto as mt
from poselab.models.mesh import build_mesh_regressor
from poselab.results import Claim, Results

RUNS = {
    "regression": dict(use_meta=False, use_aux=False),
    "meta": dict(use_meta=True, use_aux=False),
    "meta_aux": dict(use_meta=True, use_aux=True),
}
"""The three trained models, as overrides of :class:`~poselab.methods.meta_tto.MetaTTOConfig`."""

ROWS = {"regression": ("regression", 0), "eft": ("regression", None), "meta": ("meta", None),
        "meta_aux": ("meta_aux", None)}
"""The paper's four-way ablation: (trained model, TTO steps; None = the profile's ``tto_steps``)."""

CONFIGS = {
    "fast": dict(net="mesh_tiny", train=64, test=16, pretrain=10, iterations=4, batch=8, pretrain_lr=1e-3,
                 lr=1e-4, tto_steps=2, max_steps=4, log_every=2),
    "book": dict(net="mesh_tiny", train=3000, test=200, pretrain=1500, iterations=600, batch=16, pretrain_lr=1e-3,
                 lr=3e-4, tto_steps=10, max_steps=40, log_every=50),
    "full": dict(net="mesh_small", train=12000, test=1000, pretrain=6000, iterations=2000, batch=32, pretrain_lr=1e-3,
                 lr=3e-4, tto_steps=10, max_steps=60, log_every=200),
}
"""Per profile: network, crop counts (training set; each test set), plain-regression steps, steps per
run, batch, learning rates (pre-training; the runs), TTO steps of the ablation, the longest TTO curve,
steps between training records. Crops are 64 px."""

TEST_SETS = {"in_domain": "synthetic", "cross_domain": "realistic"}
"""Test set name -> look (both from the held-out test subjects)."""

NOISY_DETECTOR = mt.DetectorNoise(sigma=0.06, outlier_prob=0.15)
"""A worse detector (three times the default jitter and outlier rate) for a second set of TTO curves
on the in-domain crops: the paper's EFT degradation comes from overfitting noisy keypoints, and with
the default detector our EFT does not degrade within the steps we run."""

FLAT_MM = 1.0
"""A TTO curve whose last value is within this of its best (mm) has not degraded: smaller rises are
evaluation noise, not the degradation the paper describes."""


def build_data(cfg: dict, seed: int, progress: bool) -> dict:
    """Render (or load from the cache) the training crops and the two test sets."""
    data = {"train": render_image_set("train", "synthetic", cfg["train"], 64, seed, progress=progress)}
    for name, look in TEST_SETS.items():
        data[name] = render_image_set("test", look, cfg["test"], 64, seed, progress=progress)
    return data


def tto_curves(network, aux_network, aux_weight: float, images, targets, body, steps: int, lr: float,
               pve_steps=()) -> dict:
    """Errors after ``0 .. steps`` test-time steps of ``network`` on ``images``.

    Returns ``{"mpjpe_mm", "pa_mpjpe_mm", "reprojection"}``, lists of ``steps + 1`` values:
    root-relative MPJPE and PA-MPJPE (mm), and the 2D reprojection term of the test loss (the
    auxiliary term left out, so that runs with and without it compare); and ``"pve_mm"``,
    ``{step: PVE (mm)}`` for the steps in ``pve_steps`` (skinning every step would be slow).
    """
    x = images.float_images(next(network.parameters()).device)
    preds = mt.test_time_optimise(network, x, targets.detected, targets.focal, targets.center, body, steps, lr,
                                  aux_network=aux_network, aux_weight=aux_weight, visible=targets.visible)
    curves: dict = {"mpjpe_mm": [], "pa_mpjpe_mm": [], "reprojection": [], "pve_mm": {}}
    for step, pred in enumerate(preds):
        scores = mt.evaluate_mesh(pred, targets, body, vertices=step in pve_steps)
        if step in pve_steps:
            curves["pve_mm"][step] = scores["pve_mm"]
        curves["mpjpe_mm"].append(scores["mpjpe_mm"])
        curves["pa_mpjpe_mm"].append(scores["pa_mpjpe_mm"])
        loss = mt.test_loss(pred, targets.detected, targets.focal, targets.center, targets.size, body,
                            visible=targets.visible)
        curves["reprojection"].append(float(loss.mean()))
    return curves


def run(profile: str = "book", device: str = "auto", seed: int = 0, progress: bool = True,
        checkpoint_dir=None, resume: bool = True) -> Results:
    """Render the data, pre-train, train the three runs, evaluate with TTO and check the claims.

    With ``checkpoint_dir``, the pre-training and every run checkpoint there at each record
    (``meta_tto-<profile>-<run>-seed<seed>.safetensors``) and a rerun continues them exactly;
    ``resume=False`` starts them over.

    Returns:
        :class:`~poselab.results.Results`. ``metrics["runs"][name]`` (the :data:`RUNS`) holds
        ``history`` (the training records) and ``seconds``; ``metrics["curves"][test_set][name]``
        the :func:`tto_curves` up to ``max_steps``; ``metrics["noisy_curves"][name]`` the same on the
        in-domain crops with detections of the :data:`NOISY_DETECTOR`; ``metrics["ablation"][test_set][row]`` the
        MPJPE / PA-MPJPE / PVE (mm) of the :data:`ROWS`. ``artifacts`` holds the data, the networks and the config.
    """
    check_profile(profile)
    start = time.perf_counter()
    dev = resolve_device(device)
    cfg = CONFIGS[profile]
    data = build_data(cfg, seed, progress)
    body = body_model(dev)
    train = data["train"]
    seed_everything(seed)
    network = build_mesh_regressor(cfg["net"])
    train_targets = mt.mesh_targets(train, body_model("cpu"), seed=seed)
    network.set_initial(rotations=train_targets.rotations, phenotypes=train_targets.phenotypes)
    base = mt.MetaTTOConfig(iterations=cfg["iterations"], batch=cfg["batch"], lr=cfg["lr"],
                            tto_steps=cfg["tto_steps"], log_every=cfg["log_every"])
    pre_cfg = mt.MetaTTOConfig(iterations=cfg["pretrain"], batch=cfg["batch"], lr=cfg["pretrain_lr"],
                               use_meta=False, use_aux=False, log_every=cfg["log_every"])
    evals = {name: data[name] for name in TEST_SETS}

    def checkpoint(name: str):
        return None if checkpoint_dir is None else Path(checkpoint_dir) / f"meta_tto-{profile}-{name}-seed{seed}.safetensors"

    t0 = time.perf_counter()
    pretrained, _, pre_history = mt.train_mesh(network, train, pre_cfg, eval_sets=evals, device=dev, seed=seed,
                                               progress=progress, checkpoint_path=checkpoint("pretrain"), resume=resume)
    metrics: dict = {"net": cfg["net"], "train": len(train), "test": cfg["test"], "pretrain": cfg["pretrain"],
                     "iterations": cfg["iterations"], "tto_steps": cfg["tto_steps"], "max_steps": cfg["max_steps"],
                     "tto_lr": base.tto_lr, "aux_weight": base.aux_weight,
                     "pretrained": {"history": pre_history.records, "seconds": time.perf_counter() - t0},
                     "runs": {}, "curves": {name: {} for name in TEST_SETS}, "ablation": {}}
    networks: dict = {"pretrained": pretrained}
    for name, overrides in RUNS.items():
        t = time.perf_counter()
        config = replace(base, **overrides)
        aux = copy.deepcopy(pretrained) if config.use_aux else None
        net, aux, history = mt.train_mesh(pretrained, train, config, aux_network=aux, eval_sets=evals, device=dev,
                                          seed=seed + 1, progress=progress, checkpoint_path=checkpoint(name),
                                          resume=resume)
        networks[name], networks[f"{name}/aux"] = net, aux
        metrics["runs"][name] = {"config": dict(overrides), "history": history.records,
                                 "seconds": time.perf_counter() - t}

    def curves(name: str, test_set: str, targets: mt.MeshTargets, pve_steps=()) -> dict:
        aux = networks[f"{name}/aux"]
        return tto_curves(networks[name], aux, base.aux_weight if aux is not None else 0.0, data[test_set],
                          targets, body, cfg["max_steps"], base.tto_lr, pve_steps=pve_steps)

    for test_set in TEST_SETS:
        targets = mt.mesh_targets(data[test_set], body, seed=seed + 2)
        for name in RUNS:
            metrics["curves"][test_set][name] = curves(name, test_set, targets, pve_steps=(0, cfg["tto_steps"]))
        metrics["ablation"][test_set] = {}
        for row, (run_name, steps) in ROWS.items():
            curve, step = metrics["curves"][test_set][run_name], cfg["tto_steps"] if steps is None else steps
            metrics["ablation"][test_set][row] = {"mpjpe_mm": curve["mpjpe_mm"][step],
                                                  "pa_mpjpe_mm": curve["pa_mpjpe_mm"][step],
                                                  "pve_mm": curve["pve_mm"][step]}
    noisy = mt.mesh_targets(data["in_domain"], body, noise=NOISY_DETECTOR, seed=seed + 2)
    metrics["noisy_curves"] = {name: curves(name, "in_domain", noisy) for name in RUNS}
    artifacts = {"data": data, "networks": networks, "config": cfg}
    return Results(experiment="meta_tto", profile=profile, device=str(dev), seed=seed,
                   seconds=time.perf_counter() - start, metrics=metrics, claims=_claims(metrics), artifacts=artifacts)


# ------------------------------------------------------------------------------------------ claims


def _claims(m: dict) -> list[Claim]:
    claims = []
    for test_set, label in (("in_domain", "in-domain"), ("cross_domain", "cross-domain")):
        a = {row: v["mpjpe_mm"] for row, v in m["ablation"][test_set].items()}
        ladder = ["regression", "eft", "meta", "meta_aux"]
        steps = [a[y] < a[x] for x, y in zip(ladder, ladder[1:])]
        claims.append(Claim(
            f"ablation/{test_set}", f"Each part lowers MPJPE ({label}): regression > EFT > meta-learning > "
            "meta-learning + auxiliary network",
            "both meta-learning and the auxiliary network help (3DPW, ablation table)",
            " / ".join(f"{r} {a[r]:.1f}" for r in ladder) + " mm",
            all(steps), "" if all(steps) else "not decreasing at: " + ", ".join(
                f"{x} -> {y}" for (x, y), ok in zip(zip(ladder, ladder[1:]), steps) if not ok)))
    curves = m["curves"]["in_domain"]
    method, eft = curves["meta_aux"]["mpjpe_mm"], curves["regression"]["mpjpe_mm"]
    claims.append(_steps_claim("steps", "in-domain", method, eft))
    noisy = m["noisy_curves"]
    claims.append(_steps_claim("steps/noisy_detector", "in-domain, 3x noisier detections",
                               noisy["meta_aux"]["mpjpe_mm"], noisy["regression"]["mpjpe_mm"]))
    target = eft[m["tto_steps"]]
    reach = next((k for k, v in enumerate(method) if v <= target), None)
    faster = reach is not None and reach < m["tto_steps"]
    claims.append(Claim(
        "convergence", "The method converges faster than EFT",
        "reaches a given error in fewer steps",
        f"EFT after {m['tto_steps']} steps: {target:.1f} mm; the method reaches it after "
        + (f"{reach} steps" if reach is not None else f"none of {len(method) - 1} steps"),
        faster, "" if faster else "the method does not reach EFT's error sooner here"))
    return claims


def _steps_claim(claim_id: str, label: str, method: list[float], eft: list[float]) -> Claim:
    keeps = method[-1] <= min(method) + FLAT_MM
    eft_turns = eft[-1] > min(eft) + FLAT_MM
    return Claim(
        claim_id, f"With more TTO steps the method keeps improving while EFT first improves, then degrades ({label})",
        f"EFT's error rises after its best step; the method's keeps falling (a rise under {FLAT_MM:g} mm "
        "counts as flat)",
        f"MPJPE after 0 / best / {len(method) - 1} steps: method {method[0]:.1f} / {min(method):.1f} / "
        f"{method[-1]:.1f}, EFT {eft[0]:.1f} / {min(eft):.1f} / {eft[-1]:.1f} mm", keeps and eft_turns,
        "" if keeps and eft_turns else ("EFT does not degrade within these steps" if not eft_turns
                                         else "the method's error rises again"))
