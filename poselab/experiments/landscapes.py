"""Experiment ``landscapes`` (chapter 1, ``book/01_loss_landscapes.ipynb``).

What the loss landscape of a 2D-to-3D lifter looks like around a trained solution, measured
with the tools of :mod:`poselab.landscape`:

* the training loss along one and two filter-normalised random directions;
* its sharpness in numbers: the top Hessian eigenvalue ``lambda_max``;
* the landscapes of the low- and high-DAR thirds of the training poses (the flat-ensembles
  paper: high depth ambiguity gives steeper landscapes), and whether those two sub-losses share
  a minimum (the paper's ``L = 1/K sum_k L_k``): fine-tuning on one third alone, does the other
  third's loss rise?
* the loss along the straight line between two solutions trained from different seeds (a
  barrier between them means disconnected minima).

All losses are MPJPE, reported in millimetres.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch.func import functional_call

from poselab import landscape
from poselab.checks import check_profile, resolve_device, seed_everything
from poselab.data.lifting import LiftingSet, build_lifting_splits, dar_thirds, fixed_subset, mean_image_extent
from poselab.evaluation import lifting_metrics, predict
from poselab.models.lifting import build_lifter
from poselab.results import Claim, Results
from poselab.train import mpjpe_loss, train_model

CONFIGS = {
    "fast": dict(hidden=256, num_blocks=1, dropout=0.0, epochs=8, batch_size=256, lr=1e-3, lr_decay=0.95,
                 landscape_samples=1024, line_points=21, grid_points=11, span=1.0,
                 eig_batches=2, eig_batch_size=256, eig_max_iter=20, eig_tol=1e-3, interp_points=11,
                 finetune_epochs=2, finetune_lr=1e-4),
    "book": dict(hidden=512, num_blocks=2, dropout=0.0, epochs=20, batch_size=256, lr=1e-3, lr_decay=0.95,
                 landscape_samples=2048, line_points=41, grid_points=25, span=1.0,
                 eig_batches=4, eig_batch_size=512, eig_max_iter=50, eig_tol=1e-3, interp_points=21,
                 finetune_epochs=3, finetune_lr=1e-4),
    "full": dict(hidden=1024, num_blocks=2, dropout=0.0, epochs=60, batch_size=512, lr=1e-3, lr_decay=0.97,
                 landscape_samples=8192, line_points=61, grid_points=41, span=1.0,
                 eig_batches=8, eig_batch_size=1024, eig_max_iter=100, eig_tol=1e-4, interp_points=41,
                 finetune_epochs=5, finetune_lr=1e-4),
}
"""Per profile: the MLP lifter and its training, the evaluation set of the landscapes (a fixed
random subset of the training poses), grid sizes (``span``: the directions are scaled to
``[-span, span]``), the power iteration (batches of training poses averaged, tolerance, cap), the
points on the line between the two solutions and the fine-tuning on each DAR third.

The lifter is trained **without dropout**: landscapes are measured in eval mode, and with dropout
the eval-mode network is not the one the optimiser minimised (its loss would not be at a minimum
at the trained weights)."""

BARRIER_THRESHOLD = 0.10
"""The barrier claim holds when the barrier exceeds 10 % of the mean loss of the two end points."""


def train_lifter(splits: dict, cfg: dict, seed: int, device, progress: bool, checkpoint: Path | None,
                 resume: bool = True):
    """Train the chapter's MLP lifter from ``seed`` (initialisation and batch order) on ``splits["train"]``."""
    seed_everything(seed)
    model = build_lifter("mlp", hidden=cfg["hidden"], num_blocks=cfg["num_blocks"], dropout=cfg["dropout"])
    history = train_model(model, splits["train"], epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                          lr=cfg["lr"], lr_decay=cfg["lr_decay"], device=device, seed=seed,
                          checkpoint_path=checkpoint, resume=resume, progress=progress)
    return model, history


def finetune_conflict(model: torch.nn.Module, subsets: dict[str, LiftingSet], *, epochs: int, lr: float,
                      batch_size: int, seed: int) -> dict[str, dict[str, float]]:
    """Fine-tune a copy of ``model`` on each sub-loss alone and measure every sub-loss after it.

    Returns ``{trained_on: {measured_on: change of that sub-loss in mm}}``. If the sub-losses
    shared their minimum, descending one would not climb the other; a rise of the *other*
    sub-loss shows that their minima differ. ``model`` is left unchanged.

    The copies are fine-tuned (Adam, seeded batch order) **in eval mode**: the loss they descend
    is the eval-mode loss the landscapes show. In train mode, BatchNorm's running statistics would
    drift towards the subset's own statistics, and the other subset's loss would rise for that
    reason alone.
    """
    before = {name: 1000.0 * landscape.dataset_loss(model, data) for name, data in subsets.items()}
    device = next(model.parameters()).device
    out = {}
    for name, data in subsets.items():
        tuned = copy.deepcopy(model).eval()
        opt = torch.optim.Adam(tuned.parameters(), lr=lr)
        x_all, y_all = data.inputs.to(device), data.targets.to(device)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for idx in torch.randperm(len(data), generator=gen).to(device).split(batch_size):
                opt.zero_grad(set_to_none=True)
                mpjpe_loss(tuned, x_all[idx], y_all[idx]).backward()
                opt.step()
        out[name] = {other: 1000.0 * landscape.dataset_loss(tuned, d) - before[other] for other, d in subsets.items()}
    return out


@torch.no_grad()
def predictions_along(model: torch.nn.Module, direction: dict, alphas, inputs: torch.Tensor) -> torch.Tensor:
    """Predictions of ``model`` at ``theta + alpha * direction`` for each alpha: ``(A, B, J, 3)`` metres, CPU.

    ``inputs`` (B, J, 2); ``direction`` keyed like the model's trainable parameters
    (:func:`poselab.landscape.random_direction`; ``ValueError`` otherwise). Eval mode; the model
    itself (parameters and train/eval flags) is left unchanged.
    """
    alphas = torch.as_tensor(alphas, dtype=torch.float64).flatten()
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    x = inputs.to(next(iter(params.values())).device)
    out = []
    with landscape._eval_mode(model):
        for a in alphas.tolist():  # a handful of points, each a batched forward pass
            moved = landscape.add_direction(params, direction, a)
            out.append(functional_call(model, {**moved, **buffers}, (x,)).cpu())
    return torch.stack(out)


def _mm(t) -> list[float]:
    return [1000.0 * float(v) for v in torch.as_tensor(t).flatten()]


def run(profile: str = "book", device: str = "auto", seed: int = 0, progress: bool = True,
        checkpoint_dir: str | Path | None = None, resume: bool = True) -> Results:
    """Train two MLP lifters (seeds ``seed`` and ``seed + 1``) and measure their loss landscapes.

    Returns:
        :class:`~poselab.results.Results`. ``metrics``: ``models`` (test metrics of both
        solutions), ``line`` / ``surface`` (training loss in mm along one / two filter-normalised
        directions), ``dar_lines`` (the same line on the low- and high-DAR thirds), ``lambda_max``
        (training set and both thirds, with iterations), ``image_extent`` (mean 2D size of both thirds),
        ``finetune_conflict`` (see :func:`finetune_conflict`), ``interpolation``
        (loss between the two solutions and the barrier) and the claims. ``artifacts``: both models,
        the directions, the landscape set, the splits and the configuration.
    """
    check_profile(profile)
    start = time.perf_counter()
    dev = resolve_device(device)
    cfg = CONFIGS[profile]
    splits = build_lifting_splits(profile, seed=seed)
    ckpt = (lambda s: Path(checkpoint_dir) / f"landscapes-{profile}-seed{s}.pt") if checkpoint_dir else (lambda s: None)
    model_a, history_a = train_lifter(splits, cfg, seed, dev, progress, ckpt(seed), resume)
    model_b, history_b = train_lifter(splits, cfg, seed + 1, dev, progress, ckpt(seed + 1), resume)

    metrics: dict = {"models": {}}
    for name, model in (("a", model_a), ("b", model_b)):
        metrics["models"][name] = {split: lifting_metrics(predict(model, splits[split].inputs, device=dev),
                                                          splits[split].targets)["mpjpe_mm"]
                                   for split in ("train", "test_in", "test_cross")}

    land = fixed_subset(splits["train"], cfg["landscape_samples"], seed)
    gen = torch.Generator().manual_seed(seed)
    dx = landscape.random_direction(model_a, generator=gen)
    dy = landscape.random_direction(model_a, generator=gen)
    span = cfg["span"]
    alphas = torch.linspace(-span, span, cfg["line_points"], dtype=torch.float64)
    grid = torch.linspace(-span, span, cfg["grid_points"], dtype=torch.float64)
    metrics["line"] = {"alphas": alphas.tolist(), "loss_mm": _mm(landscape.loss_along_line(model_a, land, dx, alphas))}
    surface = landscape.loss_surface(model_a, land, dx, dy, grid, grid)
    metrics["surface"] = {"alphas": grid.tolist(), "betas": grid.tolist(),
                          "loss_mm": (1000.0 * surface).tolist()}

    thirds = dar_thirds(land)
    metrics["dar_ranges"] = {k: [float(s.dar.min()), float(s.dar.max())] for k, s in thirds.items()}
    metrics["dar_lines"] = {k: _mm(landscape.loss_along_line(model_a, s, dx, alphas)) for k, s in thirds.items()}

    eig_sets = {"train": splits["train"], **dar_thirds(splits["train"])}  # curvature of the *training* loss
    metrics["lambda_max"] = {}
    for name, data in eig_sets.items():
        batches = landscape.sample_batches(data, cfg["eig_batches"], min(cfg["eig_batch_size"], len(data) // cfg["eig_batches"]),
                                           generator=torch.Generator().manual_seed(seed))
        eig = landscape.top_hessian_eigenvalue(model_a, batches, tol=cfg["eig_tol"], max_iter=cfg["eig_max_iter"],
                                               generator=torch.Generator().manual_seed(seed))
        metrics["lambda_max"][name] = {"value": eig.value, "iterations": eig.iterations, "converged": eig.converged}

    train_thirds = dar_thirds(splits["train"])
    metrics["image_extent"] = {k: mean_image_extent(v) for k, v in train_thirds.items()}
    metrics["finetune_conflict"] = finetune_conflict(model_a, train_thirds, epochs=cfg["finetune_epochs"],
                                                     lr=cfg["finetune_lr"], batch_size=cfg["batch_size"], seed=seed)

    between = torch.linspace(0.0, 1.0, cfg["interp_points"], dtype=torch.float64)
    interp = landscape.interpolate_models(model_a, model_b, land, between)
    barrier = landscape.barrier_height(between, interp)
    ends = 0.5 * float(interp[0] + interp[-1])
    metrics["interpolation"] = {"alphas": between.tolist(), "loss_mm": _mm(interp), "barrier_mm": 1000.0 * barrier,
                                "relative_barrier": barrier / ends}
    metrics["samples"] = {"landscape": len(land), **{k: len(v) for k, v in splits.items()}}

    return Results(experiment="landscapes", profile=profile, device=str(dev), seed=seed,
                   seconds=time.perf_counter() - start, metrics=metrics, claims=_claims(metrics),
                   artifacts={"model": model_a, "model_b": model_b, "histories": (history_a, history_b),
                              "directions": (dx, dy), "landscape_set": land, "splits": splits, "config": cfg})


def _claims(m: dict) -> list[Claim]:
    lam = m["lambda_max"]
    low, high = lam["low_dar"]["value"], lam["high_dar"]["value"]
    dar_holds = high > low
    line_low, line_high = m["dar_lines"]["low_dar"], m["dar_lines"]["high_dar"]
    centre = len(line_low) // 2
    rise_low = max(line_low) - line_low[centre]
    rise_high = max(line_high) - line_high[centre]
    conflict = m["finetune_conflict"]
    rise_of_high = conflict["low_dar"]["high_dar"]  # tuned on low DAR, measured on high DAR
    rise_of_low = conflict["high_dar"]["low_dar"]
    sub_holds = rise_of_high > 0 and rise_of_low > 0
    extent = m.get("image_extent", {})
    rel = m["interpolation"]["relative_barrier"]
    barrier_holds = rel > BARRIER_THRESHOLD
    return [
        Claim("high_dar_steeper",
              "Poses with a high depth ambiguity ratio have a steeper training-loss landscape "
              "(holds here if lambda_max of the highest-DAR third exceeds the lowest third's)",
              "qualitative: high-DAR poses exhibit extremely steep and unstable loss landscapes",
              f"lambda_max {high:.3g} (high DAR) vs {low:.3g} (low DAR); loss rise along the same direction "
              f"{rise_high:.0f} vs {rise_low:.0f} mm",
              dar_holds,
              landscape.dar_curvature_note(dar_holds, extent)),
        Claim("sub_losses_conflict",
              "The loss is a mix of sub-losses of differing ambiguity with different minima (holds here if "
              "fine-tuning on the low-DAR third alone raises the high-DAR third's loss, and vice versa)",
              "L = 1/K sum_k L_k over subsets of differing ambiguity, with disconnected minima",
              f"tuned on low DAR: low {conflict['low_dar']['low_dar']:+.1f} mm, high {rise_of_high:+.1f} mm; "
              f"tuned on high DAR: high {conflict['high_dar']['high_dar']:+.1f} mm, low {rise_of_low:+.1f} mm",
              sub_holds,
              "" if sub_holds else
              "the solution is not yet at a minimum of the whole loss (short training), so descending one "
              "sub-loss still helps the other"),
        Claim("barrier_between_seeds",
              "Solutions from different random seeds lie in disconnected minima: the loss rises on the "
              f"straight line between them (holds here if the barrier exceeds {BARRIER_THRESHOLD:.0%} of the "
              "end points' loss)",
              "qualitative: high-loss barriers separate the minima",
              f"barrier {m['interpolation']['barrier_mm']:.1f} mm = {rel:.0%} of the end points' loss",
              barrier_holds,
              "" if barrier_holds else
              "both runs share the data and the architecture and end in the same wide basin (linear mode "
              "connectivity, as seen for small networks trained briefly)"),
    ]
