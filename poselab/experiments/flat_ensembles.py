"""Experiment ``flat_ensembles`` (chapter 2, ``book/02_flat_ensembles.ipynb``).

"Towards Generalizable 3D Human Pose Estimation via Ensembles on Flat Loss Landscapes" on our
data: for each lifting backbone (MLP, CNN, GCN, Transformer), a plain lifter (``baseline``), the
lifter with the Adaptive Scaling Mechanism (``asm``, one head) and ASM ensembles of M heads on
one shared encoder (``asm_m2``, ``asm_m4``, ...), all trained from the same encoder
initialisation on the studio domain, then measured:

* in-domain (``test_in``) and cross-domain (``test_cross``) MPJPE / P-MPJPE;
* flatness with and without ASM: ``lambda_max`` of the training loss and the loss along a
  filter-normalised random direction (2D surface for the first backbone);
* robustness: MPJPE on ``test_in`` under Gaussian 2D noise of growing sigma (pixels);
* diversity: the deviation between the heads' predictions per joint on ``test_cross``;
* cost: parameters and training time against one network and against M independent networks;
* depth ambiguity: ``lambda_max`` on the low- and high-DAR thirds of the training poses.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from poselab import landscape
from poselab.bench import training_step_seconds
from poselab.checks import check_profile, resolve_device, seed_everything
from poselab.data.lifting import build_lifting_splits, dar_thirds, fixed_subset, mean_image_extent
from poselab.data.skeleton import H36M17
from poselab.evaluation import lifting_metrics, predict
from poselab.methods.flat_ensemble import FlatEnsemble, ensemble_loss, head_deviation
from poselab.models.lifting import LIFTERS, SMALL_SIZES, build_lifter
from poselab.results import Claim, Results
from poselab.train import train_model

CONFIGS = {
    "fast": dict(backbones=LIFTERS, sizes=SMALL_SIZES, heads=(1, 2), scale_hidden=32, epochs=6, batch_size=256,
                 lr=1e-3, lr_decay=0.95, landscape_samples=512, line_points=11, grid_points=7, span=1.0,
                 eig_batches=2, eig_batch_size=256, eig_max_iter=10, eig_tol=1e-3, noise_px=(0.0, 5.0, 10.0, 20.0), timing_repeats=5),
    "book": dict(backbones=LIFTERS, sizes={name: {} for name in LIFTERS}, heads=(1, 2, 4, 8), scale_hidden=64,
                 epochs=15, batch_size=256, lr=1e-3, lr_decay=0.95, landscape_samples=2048, line_points=21,
                 grid_points=15, span=1.0, eig_batches=4, eig_batch_size=512, eig_max_iter=30, eig_tol=1e-3,
                 noise_px=(0.0, 2.5, 5.0, 10.0, 20.0), timing_repeats=10),
    "full": dict(backbones=LIFTERS, sizes={name: {} for name in LIFTERS}, heads=(1, 2, 4, 8), scale_hidden=64,
                 epochs=50, batch_size=512, lr=1e-3, lr_decay=0.96, landscape_samples=8192, line_points=41,
                 grid_points=31, span=1.0, eig_batches=8, eig_batch_size=1024, eig_max_iter=100, eig_tol=1e-4,
                 noise_px=(0.0, 2.5, 5.0, 10.0, 20.0, 40.0), timing_repeats=20),
}
"""Per profile: backbones and their sizes (``{}`` = the defaults of :func:`build_lifter`), the
numbers of heads M of the ASM variants, the scaling MLP's width, training, the landscape
evaluation set and grids, the power iteration and the 2D noise levels (pixels)."""

DIFFICULT_JOINTS = ("LWrist", "RWrist", "LFoot", "RFoot")
"""The joints the paper singles out as difficult (Fig. 3): wrists and ankles (``LFoot``/``RFoot`` are the
ankles in the Human3.6M 17-joint layout)."""

TIMED_CLAIMS = frozenset({"ensemble_costs_about_one_network"})
"""Claims decided by wall-clock timings: their verdict can change from one run to the next on the same
machine, so the regression and determinism tests do not compare it (:func:`poselab.regression.flatten`)."""

COST_THRESHOLD = 1.5
"""The cost claim holds when a training step of the largest ensemble takes at most 1.5 x one network's."""


def variant_names(heads) -> list[str]:
    """``["baseline", "asm", "asm_m2", ...]`` for the head counts ``heads`` (1 = ``"asm"``)."""
    return ["baseline"] + ["asm" if m == 1 else f"asm_m{m}" for m in heads]


def build_variant(backbone: str, num_heads: int, sizes: dict, scale_hidden: int, seed: int) -> torch.nn.Module:
    """The lifter ``backbone`` (``num_heads == 0``) or a :class:`FlatEnsemble` of ``num_heads`` ASM heads on it.

    The encoder is built right after ``seed_everything(seed)``, so every variant of a backbone
    starts from the same encoder weights: differences come from ASM and the heads alone.
    """
    seed_everything(seed)
    lifter = build_lifter(backbone, **sizes)
    if num_heads == 0:
        return lifter
    return FlatEnsemble(lifter, num_heads=num_heads, scaling=True, scale_hidden=scale_hidden)


def difficult_joint_indices() -> list[int]:
    """Indices of :data:`DIFFICULT_JOINTS` in the Human3.6M 17-joint layout."""
    return [H36M17.index(name) for name in DIFFICULT_JOINTS]


def noise_curve(model, dataset, sigmas, seed: int, device) -> list[float]:
    """MPJPE (mm) of ``model`` on ``dataset`` with Gaussian 2D noise of each sigma (pixels).

    The noise of a given sigma is drawn from the same seed for every model, so models are
    compared on identical inputs.
    """
    out = []
    for i, sigma in enumerate(sigmas):
        noisy = dataset.with_noise(sigma, torch.Generator().manual_seed(seed * 1000 + i)) if sigma > 0 else dataset
        out.append(lifting_metrics(predict(model, noisy.inputs, device=device), noisy.targets)["mpjpe_mm"])
    return out


def _lambda_max(model, data, cfg: dict, seed: int) -> dict:
    """``{"value", "converged", "iterations"}`` of the top Hessian eigenvalue of the training loss."""
    size = min(cfg["eig_batch_size"], len(data) // cfg["eig_batches"])
    batches = landscape.sample_batches(data, cfg["eig_batches"], size, generator=torch.Generator().manual_seed(seed))
    eig = landscape.top_hessian_eigenvalue(model, batches, loss_fn=ensemble_loss, tol=cfg["eig_tol"],
                                           max_iter=cfg["eig_max_iter"], generator=torch.Generator().manual_seed(seed))
    return {"value": eig.value, "converged": eig.converged, "iterations": eig.iterations}


@torch.no_grad()
def mean_denominator(model: FlatEnsemble, inputs: torch.Tensor, batch_size: int = 4096) -> float:
    """Mean over samples and heads of ASM's denominator ``relu(h(g(x))) + 1`` (eval mode; >= 1)."""
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        total = sum(float(model.scales(model.features(inputs[i:i + batch_size].to(dev))).sum())
                    for i in range(0, inputs.shape[0], batch_size))
    finally:
        model.train(was_training)
    return total / (inputs.shape[0] * model.num_heads)


def check_config(cfg: dict) -> None:
    """The experiment's assumptions about a configuration, with clear errors."""
    heads = list(cfg["heads"])
    if not heads or heads[0] != 1 or heads != sorted(set(heads)):
        raise ValueError(f"heads: expected increasing head counts starting with 1 (the ASM model), got {heads}")
    if cfg["line_points"] % 2 == 0:
        raise ValueError(f"line_points: expected an odd number (the solution at the centre), got {cfg['line_points']}")


def run(profile: str = "book", device: str = "auto", seed: int = 0, progress: bool = True,
        checkpoint_dir: str | Path | None = None, resume: bool = True) -> Results:
    """Train every backbone x variant and measure accuracy, flatness, robustness, diversity and cost.

    Returns:
        :class:`~poselab.results.Results` whose ``metrics[backbone]`` holds, per variant,
        ``test_in`` / ``test_cross`` MPJPE and P-MPJPE (mm), ``parameters`` and
        ``train_seconds``; plus ``lambda_max``, ``lambda_converged`` and ``line_mm`` (baseline and
        asm), ``asm_denominator`` (mean ASM denominator on the training poses), ``step_ms``, ``noise_mm``
        (baseline, asm, largest ensemble; one value per sigma of ``metrics["noise_px"]``) and
        ``head_deviation_mm`` (17 values, largest ensemble). ``metrics["surface"]`` holds the 2D
        surfaces of the first backbone, ``metrics["dar_lambda_max"]`` the DAR-third curvatures and
        ``metrics["image_extent"]`` the thirds' mean 2D size.
        ``artifacts["models"][backbone][variant]`` are the trained models.
    """
    check_profile(profile)
    start = time.perf_counter()
    dev = resolve_device(device)
    cfg = CONFIGS[profile]
    check_config(cfg)
    splits = build_lifting_splits(profile, seed=seed)
    land = fixed_subset(splits["train"], cfg["landscape_samples"], seed)
    heads = (0, *cfg["heads"])
    names = variant_names(cfg["heads"])
    largest = names[-1]
    alphas = torch.linspace(-cfg["span"], cfg["span"], cfg["line_points"], dtype=torch.float64)
    grid = torch.linspace(-cfg["span"], cfg["span"], cfg["grid_points"], dtype=torch.float64)

    metrics: dict = {"variants": names, "heads": list(cfg["heads"]), "noise_px": list(cfg["noise_px"]),
                     "line_alphas": alphas.tolist(), "surface": {"alphas": grid.tolist()},
                     "difficult_joints": list(DIFFICULT_JOINTS)}
    models: dict = {}
    for backbone in cfg["backbones"]:
        models[backbone] = {}
        entry: dict = {}
        for name, m in zip(names, heads):
            model = build_variant(backbone, m, cfg["sizes"][backbone], cfg["scale_hidden"], seed)
            ckpt = (Path(checkpoint_dir) / f"flat_ensembles-{profile}-{backbone}-{name}-seed{seed}.pt"
                    if checkpoint_dir else None)
            history = train_model(model, splits["train"], epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                                  lr=cfg["lr"], lr_decay=cfg["lr_decay"], loss_fn=ensemble_loss, device=dev,
                                  seed=seed, checkpoint_path=ckpt, resume=resume, progress=progress)
            models[backbone][name] = model
            entry[name] = {"parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                           "train_seconds": float(sum(history.column("seconds")))}
            for split in ("test_in", "test_cross"):
                scores = lifting_metrics(predict(model, splits[split].inputs, device=dev), splits[split].targets)
                entry[name][split] = {k: scores[k] for k in ("mpjpe_mm", "p_mpjpe_mm")}

        flat_pair = {"baseline": models[backbone]["baseline"], "asm": models[backbone]["asm"]}
        eigs = {k: _lambda_max(mod, splits["train"], cfg, seed) for k, mod in flat_pair.items()}
        entry["lambda_max"] = {k: e["value"] for k, e in eigs.items()}
        entry["lambda_converged"] = {k: e["converged"] for k, e in eigs.items()}
        entry["asm_denominator"] = mean_denominator(models[backbone]["asm"], splits["train"].inputs)
        entry["line_mm"] = {}
        for k, mod in flat_pair.items():
            direction = landscape.random_direction(mod, generator=torch.Generator().manual_seed(seed))
            line = landscape.loss_along_line(mod, land, direction, alphas, loss_fn=ensemble_loss)
            entry["line_mm"][k] = [1000.0 * float(v) for v in line]
            if backbone == cfg["backbones"][0]:
                dy = landscape.random_direction(mod, generator=torch.Generator().manual_seed(seed + 1))
                surface = landscape.loss_surface(mod, land, direction, dy, grid, grid, loss_fn=ensemble_loss)
                metrics["surface"][k] = (1000.0 * surface).tolist()
        compared = ("baseline", "asm", largest)
        entry["noise_mm"] = {k: noise_curve(models[backbone][k], splits["test_in"], cfg["noise_px"], seed, dev)
                             for k in compared}
        # cost: training-step time of fresh copies, timed in turn (train_seconds above depend on machine load)
        batch = splits["train"].subset(torch.arange(min(cfg["batch_size"], len(splits["train"]))))
        fresh = {k: build_variant(backbone, m, cfg["sizes"][backbone], cfg["scale_hidden"], seed)
                 for k, m in (("baseline", 0), (largest, heads[-1]))}
        step = training_step_seconds(fresh, batch.inputs, batch.targets, ensemble_loss, cfg["timing_repeats"], dev)
        entry["step_ms"] = {k: 1000.0 * v for k, v in step.items()}
        if cfg["heads"][-1] >= 2:
            dev_m = head_deviation(models[backbone][largest], splits["test_cross"].inputs.to(dev))
            entry["head_deviation_mm"] = [1000.0 * float(v) for v in dev_m]
        metrics[backbone] = entry

    first = cfg["backbones"][0]
    metrics["surface"]["backbone"] = first
    thirds = dar_thirds(splits["train"])
    metrics["dar_lambda_max"] = {k: _lambda_max(models[first]["baseline"], s, cfg, seed)["value"]
                                 for k, s in thirds.items()}
    metrics["image_extent"] = {k: mean_image_extent(s) for k, s in thirds.items()}
    metrics["samples"] = {k: len(v) for k, v in splits.items()}

    return Results(experiment="flat_ensembles", profile=profile, device=str(dev), seed=seed,
                   seconds=time.perf_counter() - start, metrics=metrics, claims=_claims(metrics, cfg["backbones"]),
                   artifacts={"models": models, "splits": splits, "landscape_set": land, "config": cfg})


def line_rise(line_mm) -> float:
    """How far the loss climbs along a line centred on the solution, relative to the loss there:
    (mean of the two ends - centre) / centre. A ratio, so models with different losses compare."""
    centre = line_mm[len(line_mm) // 2]
    return (0.5 * (line_mm[0] + line_mm[-1]) - centre) / centre


def _count(flags) -> str:
    return f"{sum(flags)}/{len(flags)} backbones"


def _failed(bb, flags) -> str:
    return ", ".join(b for b, ok in zip(bb, flags) if not ok)


def _claims(m: dict, backbones) -> list[Claim]:
    names = m["variants"]
    largest = names[-1]
    bb = list(backbones)
    m_heads = m["heads"][-1]

    def per(fn):
        return [fn(m[b]) for b in bb]

    def fmt(fn, unit=" mm"):
        return "; ".join(f"{b} {fn(m[b])}{unit}" for b in bb)

    def gap(e, split, a, b_):  # MPJPE of variant b_ minus variant a (mm)
        return e[b_][split]["mpjpe_mm"] - e[a][split]["mpjpe_mm"]

    lam = per(lambda e: (e["lambda_max"]["baseline"], e["lambda_max"]["asm"]))
    lam_valid = all(a > 0 and b > 0 for a, b in lam)
    lam_lower = [b < a for a, b in lam]
    unconverged = [f"{b} {k}" for b in bb for k, ok in m[b].get("lambda_converged", {}).items() if not ok]
    denominators = per(lambda e: e.get("asm_denominator", float("nan")))
    flatter = per(lambda e: line_rise(e["line_mm"]["asm"]) < line_rise(e["line_mm"]["baseline"]))
    cross_gain = per(lambda e: gap(e, "test_cross", "baseline", largest) < 0)
    in_gain = per(lambda e: gap(e, "test_in", "baseline", largest) <= 0)
    ens_gain = per(lambda e: gap(e, "test_cross", "asm", largest) < 0)
    degrade = per(lambda e: {k: e["noise_mm"][k][-1] - e["noise_mm"][k][0] for k in ("baseline", largest)})
    robust = [d[largest] < d["baseline"] for d in degrade]
    cost = per(lambda e: e["step_ms"][largest] / e["step_ms"]["baseline"])
    params = per(lambda e: e[largest]["parameters"] / e["baseline"]["parameters"])

    def lam_note():
        if not lam_valid:
            return "a power iteration returned a non-positive eigenvalue: not at a minimum, the comparison is void"
        if all(lam_lower):
            return ""
        worse = [i for i, ok in enumerate(lam_lower) if not ok]
        return "; ".join(f"{bb[i]}: ASM's mean denominator is {denominators[i]:.2f}, so rescaling alone would divide "
                         f"the head's curvature by ~{denominators[i] ** 2:.1f}, yet lambda_max rose: the steepest "
                         "direction lies elsewhere (encoder or scaling network)" for i in worse)

    claims = [
        Claim("asm_lowers_lambda_max",
              "ASM lowers the top Hessian eigenvalue of the training loss (holds here if lower for every backbone)",
              "qualitative: lower top-1 eigenvalue with the adaptive scaling mechanism",
              f"{_count(lam_lower)} lower: " + "; ".join(f"{b} {a:.3g} -> {c:.3g}" for b, (a, c) in zip(bb, lam))
              + "; mean ASM denominator " + ", ".join(f"{b} {d:.2f}" for b, d in zip(bb, denominators))
              + (f" (not converged: {', '.join(unconverged)})" if unconverged else ""),
              all(lam_lower) if lam_valid else None,
              lam_note()),
        Claim("asm_flattens_landscape",
              "ASM flattens the loss landscape along filter-normalised random directions (holds here if the "
              "loss climbs less, relative to its value at the solution, for every backbone)",
              "qualitative: landscape plots are visibly smoother and wider with ASM",
              f"{_count(flatter)} flatter; relative rise at |alpha| = 1, baseline -> ASM: "
              + fmt(lambda e: f"{line_rise(e['line_mm']['baseline']):.1f} -> {line_rise(e['line_mm']['asm']):.1f}", ""),
              all(flatter),
              "" if all(flatter) else
              f"not flatter for {_failed(bb, flatter)}: one random direction per model is a single probe of a "
              "landscape with hundreds of thousands of dimensions (lambda_max, above, takes the steepest one)"),
        Claim("cross_domain_gains",
              f"The ASM ensemble (M = {m_heads}) generalises better across domains than the baseline, for every "
              "backbone",
              "consistent cross-dataset gains for MLP, CNN, GCN and Transformer (H36M -> 3DHP/3DPW)",
              f"{_count(cross_gain)} better; test_cross MPJPE baseline -> ensemble: "
              + fmt(lambda e: f"{e['baseline']['test_cross']['mpjpe_mm']:.1f} -> {e[largest]['test_cross']['mpjpe_mm']:.1f}"),
              all(cross_gain),
              "" if all(cross_gain) else
              f"worse for {_failed(bb, cross_gain)} by "
              + ", ".join(f"{gap(m[b], 'test_cross', 'baseline', largest):+.1f} mm" for b, ok in zip(bb, cross_gain)
                          if not ok)
              + "; our cross-domain test adds unseen activities and views that no head has seen, and one seed per "
                "variant does not measure seed-to-seed spread"),
        Claim("in_domain_gains",
              f"The ASM ensemble (M = {m_heads}) is also at least as accurate in-domain, for every backbone",
              "in-domain (H36M) results improve or stay on par",
              f"{_count(in_gain)} at least as accurate; test_in MPJPE baseline -> ensemble: "
              + fmt(lambda e: f"{e['baseline']['test_in']['mpjpe_mm']:.1f} -> {e[largest]['test_in']['mpjpe_mm']:.1f}"),
              all(in_gain),
              "" if all(in_gain) else
              f"worse for {_failed(bb, in_gain)} by "
              + ", ".join(f"{gap(m[b], 'test_in', 'baseline', largest):+.1f} mm" for b, ok in zip(bb, in_gain) if not ok)
              + "; one seed per variant does not measure seed-to-seed spread"),
        Claim("ensemble_beats_single_asm",
              "Averaging several heads on the flat landscape beats a single ASM head (cross-domain, every backbone)",
              "the ensemble of solutions on the smoothed landscape is what brings the gains",
              f"{_count(ens_gain)} better; test_cross ASM -> ensemble: "
              + fmt(lambda e: f"{e['asm']['test_cross']['mpjpe_mm']:.1f} -> {e[largest]['test_cross']['mpjpe_mm']:.1f}"),
              all(ens_gain),
              "" if all(ens_gain) else
              f"not better for {_failed(bb, ens_gain)}: the heads share one encoder, so they share most of their "
              "errors" + ("" if "head_deviation_mm" not in m[bb[0]] else
                          " (mean deviation between heads " + fmt(lambda e: f"{_mean(e['head_deviation_mm'][1:]):.1f}")
                          + ", against test_cross errors of hundreds of mm)")),
        Claim("noise_robustness",
              f"The ensemble is more robust to 2D input noise (holds here if its MPJPE rises less than the baseline's "
              f"from sigma = 0 to {m['noise_px'][-1]:g} px, for every backbone)",
              "qualitative: smaller degradation under growing input noise",
              f"{_count(robust)} degrade less; rise baseline vs ensemble: "
              + fmt(lambda e: f"{e['noise_mm']['baseline'][-1] - e['noise_mm']['baseline'][0]:.1f} vs "
                              f"{e['noise_mm'][largest][-1] - e['noise_mm'][largest][0]:.1f}"),
              all(robust),
              "" if all(robust) else
              f"for {_failed(bb, robust)} the ensemble's error rises as much or more; the noise enters through the "
              "encoder, which the heads share"),
    ]
    if "head_deviation_mm" in m[bb[0]]:
        hard = difficult_joint_indices()
        rest = [j for j in range(len(m[bb[0]]["head_deviation_mm"])) if j not in hard and j != 0]

        def hard_vs_rest(e):
            d = e["head_deviation_mm"]
            return _mean([d[j] for j in hard]), _mean([d[j] for j in rest])

        diverse = per(lambda e: hard_vs_rest(e)[0] > hard_vs_rest(e)[1])
        claims.append(Claim(
            "heads_disagree_on_difficult_joints",
            "The heads' predictions differ most on difficult joints (wrists, ankles): the diversity is real "
            "(holds here if their mean deviation exceeds the other joints' for every backbone)",
            "Fig. 3: deviation of the solutions' predictions on difficult joints of 3DHP",
            f"{_count(diverse)}; wrists+ankles vs other joints: "
            + fmt(lambda e: f"{hard_vs_rest(e)[0]:.1f} vs {hard_vs_rest(e)[1]:.1f}"),
            all(diverse),
            "" if all(diverse) else
            f"for {_failed(bb, diverse)} the heads disagree about as much on every joint: with one shared encoder "
            "their differences come from the last layers alone, which do not single out the limb ends"))
    dar = m["dar_lambda_max"]
    dar_holds = dar["high_dar"] > dar["low_dar"]
    claims.append(Claim(
        "high_dar_steeper",
        f"High-DAR poses have a steeper landscape (lambda_max of the {bb[0]} baseline on the highest- vs the "
        "lowest-DAR third of the training poses)",
        "qualitative: high-DAR poses exhibit extremely steep and unstable loss landscapes",
        f"{dar['high_dar']:.3g} (high) vs {dar['low_dar']:.3g} (low)",
        dar_holds,
        landscape.dar_curvature_note(dar_holds, m.get("image_extent", {}))))
    cost_holds = all(c <= COST_THRESHOLD for c in cost)
    heavy = [b for b, c, p in zip(bb, cost, params) if c > COST_THRESHOLD]
    claims.append(Claim(
        "ensemble_costs_about_one_network",
        f"An ensemble of M = {m_heads} heads on one encoder costs about one network, not M (holds here if its "
        f"training step takes at most {COST_THRESHOLD} x the baseline's for every backbone)",
        f"diversity without paying M full networks (M independent networks: {m_heads} x)",
        "training step " + "; ".join(f"{b} {c:.2f} x" for b, c in zip(bb, cost))
        + "; parameters " + "; ".join(f"{b} {p:.2f} x" for b, p in zip(bb, params)),
        cost_holds,
        "" if cost_holds else
        f"{', '.join(heavy)}: the {m_heads} heads and scaling networks act on the encoder's wide flat features "
        "and add compute comparable to this small encoder's"))
    return claims


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
