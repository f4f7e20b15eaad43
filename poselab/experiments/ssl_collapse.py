"""Experiment ``ssl_collapse`` (chapter 5, ``book/05_ssl_collapse.ipynb``).

"An Empirical Study of the Collapsing Problem in Semi-Supervised 2D Human Pose Estimation" on
rendered person crops (:mod:`poselab.data.images`). Labelled and unlabelled images come from one
look and from the training subjects; the test images from held-out subjects. Every run starts
from the same random initialisation and trains for the same number of steps (the paper's
released configurations train the semi-supervised models from the start, not from a supervised
model):

* the **main grid**: at the smallest labelled-set size, ``supervised``, ``consistency``,
  ``easy_hard`` and ``dual`` (:mod:`poselab.methods.ssl_collapse`); at the larger sizes, the
  methods in the profile's ``larger_methods`` (``book``: supervised and consistency only, which is
  what the supplementary's "more labels" attempt compares);
* **lower loss weights** (supplementary A.1): ``consistency`` with smaller ``lambda`` at the
  smallest labelled set;
* **augmentation pairs** (the idea of the paper's Figure 5): ``easy_hard`` with the hard view
  drawn from each of :data:`HARD_VARIANTS` (the easy view is always :data:`~poselab.data.augment.EASY`).

Measured: the class imbalance of the target heatmaps (5-bin histogram, low:high ratio); for
each run, the response on unlabelled images and the test PCK@0.05 / PCK@0.1 (of the crop size)
every ``log_every`` steps; the final value histogram of predicted heatmaps on unlabelled images
relative to their ground truth's (supplementary Fig. 9b).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from poselab.checks import check_profile, resolve_device, seed_everything
from poselab.data.augment import EASY, HARD
from poselab.data.heatmaps import gaussian_heatmaps, to_heatmap_pixels, value_histogram
from poselab.data.images import render_image_set
from poselab.methods.ssl_collapse import SSL_METHODS, SSLConfig, SSLData, train_ssl
from poselab.models.heatmap import build_heatmap_net
from poselab.results import Claim, Results

HARD_VARIANTS = {
    "same": EASY,
    "geometric": replace(EASY, rotation_deg=HARD.rotation_deg, scale_range=HARD.scale_range,
                         translate_frac=HARD.translate_frac),
    "randaugment": replace(EASY, rand_augment_num_ops=HARD.rand_augment_num_ops,
                           rand_augment_magnitude=HARD.rand_augment_magnitude),
    "joint_cutout": replace(EASY, joint_cutout_k=HARD.joint_cutout_k, joint_cutout_size_frac=HARD.joint_cutout_size_frac),
    "all": HARD,
}
"""Hard views for the augmentation-pair study: the easy view's distribution itself (``same``,
i.e. stop-gradient only), larger rotation/scale/shift, RandAugment, Joint Cutout, or all three."""

CONFIGS = {
    "fast": dict(look="realistic", size=64, net="resnet_tiny", pool=256, test=64, labelled=(32, 128),
                 larger_methods=("supervised", "consistency"), iterations=30, log_every=10, labelled_batch=8,
                 unlabelled_batch=8, weights=(0.1,), pairs=("same", "joint_cutout"), probe=32),
    "book": dict(look="realistic", size=64, net="resnet_tiny", pool=3000, test=500, labelled=(100, 400),
                 larger_methods=("supervised", "consistency"), iterations=2000, log_every=100, labelled_batch=16,
                 unlabelled_batch=16, weights=(0.3, 0.1), pairs=("same", "randaugment", "joint_cutout"), probe=300),
    "full": dict(look="realistic", size=64, net="resnet_small", pool=12000, test=1500, labelled=(100, 400, 1600),
                 larger_methods=SSL_METHODS, iterations=6000, log_every=250, labelled_batch=32, unlabelled_batch=32,
                 weights=(0.3, 0.1, 0.03), pairs=("same", "geometric", "randaugment", "joint_cutout"), probe=500),
}
"""Per profile: the look, crop size, network, rendered training pool and test set sizes, the
labelled-set sizes (the first ``n`` of the pool; the unlabelled images are the rest of the pool
after the largest labelled set), the methods run at the larger sizes, steps per run, and the
extra studies.

Why ``book`` trains for 2000 short steps (16 + 16 images) rather than fewer, larger ones: the
collapse is a slow drift. Consistency first *raises* the unlabelled response, like supervised
training does, and only after the network has learnt to respond does the shared pull towards
background win; in a 100-label pilot the response peaked near step 600 and sank over the next
thousand steps at the full learning rate. A run that drops its learning rate before that window
(600 steps of 32 + 32 did, at step 420) freezes the model before the drift shows. The budget of
images seen is the same as 1000 steps of 32 + 32."""


def build_data(cfg: dict, seed: int, progress: bool) -> dict:
    """Render (or load from the cache) the pool and the test set; split labelled / unlabelled.

    Returns:
        ``{"pool", "test", "unlabelled"}`` :class:`~poselab.data.images.PersonImages` and
        ``"labelled": {n: PersonImages}`` (nested: a smaller labelled set is a prefix of a larger one).
    """
    pool = render_image_set("train", cfg["look"], cfg["pool"], cfg["size"], seed, progress=progress)
    test = render_image_set("test", cfg["look"], cfg["test"], cfg["size"], seed, progress=progress)
    largest = max(cfg["labelled"])
    if largest >= cfg["pool"]:
        raise ValueError(f"labelled sizes {cfg['labelled']} leave no unlabelled images in a pool of {cfg['pool']}")
    return {"pool": pool, "test": test, "unlabelled": pool.subset(slice(largest, None)),
            "labelled": {n: pool.subset(slice(0, n)) for n in cfg["labelled"]}}


def target_heatmaps(images, stride: int, sigma: float) -> torch.Tensor:
    """Ground-truth heatmaps ``(N, 17, S/stride, S/stride)`` of a :class:`PersonImages` set (keypoints in the crop)."""
    side = images.size // stride
    return gaussian_heatmaps(to_heatmap_pixels(images.keypoints, stride), (side, side), sigma, images.in_crop)


def imbalance(heatmaps: torch.Tensor, bins: int = 5) -> dict:
    """The class imbalance of target heatmaps: bin counts and the lowest-to-highest bin ratio."""
    counts = value_histogram(heatmaps, bins)
    return {"bins": bins, "counts": counts.tolist(), "low_high_ratio": float(counts[0] / counts[-1].clamp_min(1.0))}


@torch.no_grad()
def predicted_histogram(network, images, gt_counts: torch.Tensor, batch_size: int = 256) -> list[float]:
    """Predicted value counts per bin on ``images`` divided by the ground truth's counts (Fig. 9b)."""
    device = next(network.parameters()).device
    network.eval()
    counts = torch.zeros_like(gt_counts)
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device).float().div_(255.0)
        counts += value_histogram(network(batch), len(gt_counts))
    return (counts / gt_counts.clamp_min(1.0)).tolist()


def _run(name: str, method: str, labelled, data: dict, cfg: dict, sigma_cfg: SSLConfig, seed: int, dev,
         progress: bool, checkpoint_dir, resume: bool = True, **overrides):
    config = replace(sigma_cfg, method=method, **overrides)
    nets = []
    for i in range(config.num_networks):
        seed_everything(seed + i)  # the same first network for every run; dual's second differs
        nets.append(build_heatmap_net(cfg["net"], num_keypoints=labelled.keypoints.shape[1], input_size=cfg["size"]))
    ssl_data = SSLData(labelled.images, labelled.keypoints, labelled.in_crop, data["unlabelled"].images)
    probe = data["unlabelled"].subset(slice(0, cfg["probe"]))
    evals = {"test": (data["test"].images, data["test"].keypoints, data["test"].in_crop), "unlabelled": (probe.images,)}
    path = Path(checkpoint_dir) / f"ssl_collapse-{name}.pt" if checkpoint_dir else None
    start = time.perf_counter()
    trained, history = train_ssl(nets, ssl_data, config, eval_sets=evals, device=dev, seed=seed,
                                 checkpoint_path=path, resume=resume, progress=progress)
    return trained, history, time.perf_counter() - start


def run(profile: str = "book", device: str = "auto", seed: int = 0, progress: bool = True,
        checkpoint_dir: str | Path | None = None, resume: bool = True) -> Results:
    """Render the data, train every run and check the paper's claims; see the module docstring.

    Returns:
        :class:`~poselab.results.Results`. ``metrics["runs"][name]`` holds ``method``,
        ``labelled``, ``weight``, ``hard``, ``curves`` (``iteration``, ``response`` on the unlabelled
        probe, ``pck@0.05`` / ``pck@0.1`` on the test set, and ``train_response``), ``final``
        (the last record's values), ``best_pck`` and ``seconds``; runs are named
        ``"{method}@{labelled}"``, ``"consistency@{n}-w{weight}"`` and ``"pair-{variant}@{n}"``.
        ``metrics["imbalance"]`` is the target heatmaps' histogram; ``metrics["predicted_histogram"]``
        the predicted/ground-truth ratio per bin on unlabelled images for the main methods at the
        smallest labelled set. ``artifacts`` holds the image sets and the trained networks.
    """
    check_profile(profile)
    start = time.perf_counter()
    dev = resolve_device(device)
    cfg = CONFIGS[profile]
    data = build_data(cfg, seed, progress)
    base = SSLConfig(iterations=cfg["iterations"], log_every=cfg["log_every"], labelled_batch=cfg["labelled_batch"],
                     unlabelled_batch=cfg["unlabelled_batch"])
    stride = build_heatmap_net(cfg["net"], input_size=cfg["size"]).output_stride
    gt_test = target_heatmaps(data["test"], stride, base.sigma)
    gt_unlabelled = target_heatmaps(data["unlabelled"].subset(slice(0, cfg["probe"])), stride, base.sigma)
    metrics: dict = {"look": cfg["look"], "size": cfg["size"], "net": cfg["net"], "iterations": cfg["iterations"],
                     "labelled_sizes": list(cfg["labelled"]), "unlabelled": len(data["unlabelled"]),
                     "test": len(data["test"]), "sigma": base.sigma, "stride": stride,
                     "imbalance": imbalance(gt_test), "runs": {}}
    artifacts: dict = {"data": data, "networks": {}, "config": cfg}

    def record(name, method, n, trained, history, seconds, weight=1.0, hard="all"):
        recs = history.records
        curves = {"iteration": [r["iteration"] for r in recs],
                  "response": [r["unlabelled/response"] for r in recs],
                  "pck@0.05": [r["test/pck@0.05"] for r in recs],
                  "pck@0.1": [r["test/pck@0.1"] for r in recs],
                  "train_response": [r.get("response", float("nan")) for r in recs]}
        final = {k: v[-1] for k, v in curves.items() if k != "iteration"}
        final["test_response"] = recs[-1]["test/response"]
        metrics["runs"][name] = {"method": method, "labelled": n, "weight": weight, "hard": hard, "curves": curves,
                                 "final": final, "best_pck": max(curves["pck@0.1"]), "seconds": seconds}
        artifacts["networks"][name] = trained

    smallest = min(cfg["labelled"])
    for n in cfg["labelled"]:
        for method in SSL_METHODS if n == smallest else cfg["larger_methods"]:
            name = f"{method}@{n}"
            trained, history, seconds = _run(name, method, data["labelled"][n], data, cfg, base, seed, dev,
                                             progress, checkpoint_dir, resume)
            record(name, method, n, trained, history, seconds)
    for weight in cfg["weights"]:
        name = f"consistency@{smallest}-w{weight:g}"
        trained, history, seconds = _run(name, "consistency", data["labelled"][smallest], data, cfg, base, seed, dev,
                                         progress, checkpoint_dir, resume, unsupervised_weight=weight)
        record(name, "consistency", smallest, trained, history, seconds, weight=weight)
    for variant in cfg["pairs"]:
        name = f"pair-{variant}@{smallest}"
        trained, history, seconds = _run(name, "easy_hard", data["labelled"][smallest], data, cfg, base, seed, dev,
                                         progress, checkpoint_dir, resume, hard=HARD_VARIANTS[variant])
        record(name, "easy_hard", smallest, trained, history, seconds, hard=variant)
    gt_counts = value_histogram(gt_unlabelled)
    probe_images = data["unlabelled"].images[:cfg["probe"]]
    metrics["predicted_histogram"] = {
        "ground_truth_counts": gt_counts.tolist(),
        **{m: predicted_histogram(artifacts["networks"][f"{m}@{smallest}"][0], probe_images, gt_counts)
           for m in SSL_METHODS}}
    return Results(experiment="ssl_collapse", profile=profile, device=str(dev), seed=seed,
                   seconds=time.perf_counter() - start, metrics=metrics, claims=_claims(metrics), artifacts=artifacts)


# ------------------------------------------------------------------------------------------ claims

COLLAPSE_SHARE = 0.5
"""A run counts as collapsed when its final unlabelled response is below this share of the
supervised run's (the paper's collapsed runs end 10 to 1000 times lower)."""


def response_drop(curve: list[float]) -> float:
    """Fall of a response curve from its peak to its end, as a share of the peak (0 = no fall)."""
    peak = max(curve)
    return 0.0 if peak <= 0 else (peak - curve[-1]) / peak


def high_value_share(histogram: dict, method: str, top_bins: int = 2) -> float:
    """Predicted pixels in the ``top_bins`` highest value bins over the ground truth's (1 = as many)."""
    truth = histogram["ground_truth_counts"][-top_bins:]
    predicted = [r * g for r, g in zip(histogram[method][-top_bins:], truth)]
    return sum(predicted) / max(sum(truth), 1.0)


def _final(m: dict, name: str, key: str) -> float:
    return m["runs"][name]["final"][key]


def _claims(m: dict) -> list[Claim]:
    sizes = m["labelled_sizes"]
    n0 = min(sizes)
    runs = m["runs"]
    resp = lambda name: _final(m, name, "response")  # noqa: E731
    pck = lambda name: _final(m, name, "pck@0.1")  # noqa: E731
    claims = []

    ratio = m["imbalance"]["low_high_ratio"]
    claims.append(Claim(
        "imbalance", "Target heatmaps are extremely imbalanced: lowest-value bin : highest-value bin pixels",
        "about 1000 : 1 (COCO, 64x48 heatmaps, sigma 2)", f"{ratio:.0f} : 1 ({m['stride']}x-strided "
        f"{m['size'] // m['stride']}px heatmaps, sigma {m['sigma']:g})", ratio >= 300,
        "" if ratio >= 300 else "smaller heatmaps relative to the Gaussian: fewer background pixels per joint"))

    collapsed = {n: resp(f"consistency@{n}") < COLLAPSE_SHARE * resp(f"supervised@{n}") for n in sizes}
    below = {n: pck(f"consistency@{n}") < pck(f"supervised@{n}") for n in sizes}
    text = "; ".join(f"{n} labels: response {resp(f'consistency@{n}'):.3f} vs {resp(f'supervised@{n}'):.3f} "
                     f"supervised, PCK@0.1 {pck(f'consistency@{n}'):.3f} vs {pck(f'supervised@{n}'):.3f}" for n in sizes)
    claims.append(Claim(
        "collapse", "Standard consistency collapses: unlabelled response decays towards 0 and accuracy falls "
        "below the supervised model", "COCO 1K: response 0.0002, AP 0.8 vs 31.5 supervised", text,
        collapsed[n0] and below[n0],
        "" if collapsed[n0] and below[n0] else _collapse_note(m, n0, collapsed[n0], below[n0])))

    drop = response_drop(runs[f"consistency@{n0}"]["curves"]["response"])
    claims.append(Claim(
        "downward", "Under consistency training the unlabelled response trends downwards", "always a downward trend",
        f"{100 * drop:.0f}% below its peak at the end ({n0} labels)", drop > 0.1,
        "" if drop > 0.1 else "the supervised term keeps the response up over this many steps"))

    if "predicted_histogram" in m:
        share = {meth: high_value_share(m["predicted_histogram"], meth) for meth in SSL_METHODS}
        fewest = all(share["consistency"] < share[meth] for meth in SSL_METHODS if meth != "consistency")
        claims.append(Claim(
            "high_values", "Consistency training fails to predict high-value heatmap pixels on unlabelled images",
            "supp. Fig. 9b: far fewer high-value pixels than the ground truth, fewer than the easy-hard method",
            ", ".join(f"{meth} {share[meth]:.3f}" for meth in SSL_METHODS)
            + f" (predicted / ground-truth pixels >= 0.6, {n0} labels)", fewest,
            "" if fewest else "another method predicts even fewer high-value pixels here"))

    weights = [name for name, r in runs.items() if r["method"] == "consistency" and r["weight"] != 1.0]
    worse = [w for w in weights if resp(w) < resp(f"supervised@{n0}") and pck(w) <= pck(f"supervised@{n0}")]
    claims.append(Claim(
        "weight", "A lower consistency weight slows the degradation but does not stop it (response and accuracy "
        "stay below supervised)", "lambda 1 -> 0.001: still below supervised",
        "; ".join(f"lambda {runs[w]['weight']:g}: response {resp(w):.3f}, PCK@0.1 {pck(w):.3f}" for w in weights)
        + f" (supervised {resp(f'supervised@{n0}'):.3f}, {pck(f'supervised@{n0}'):.3f})",
        len(worse) == len(weights) if weights else None,
        "" if len(worse) == len(weights) else _weight_note(m, weights, n0)))

    more = [n for n in sizes if below[n] and resp(f"consistency@{n}") < resp(f"supervised@{n}")]
    claims.append(Claim(
        "labels", "More labels do not fix it: consistency stays below supervised at every labelled-set size",
        "1K/5K/10K/full: SSL AP below supervised at each", f"below at {len(more)} of {len(sizes)} sizes",
        len(more) == len(sizes), "" if len(more) == len(sizes) else _labels_note(m, sizes, n0)))

    cured = [n for n in sizes if f"easy_hard@{n}" in runs]  # the sizes where all four methods ran
    eh_ok = {n: resp(f"easy_hard@{n}") >= COLLAPSE_SHARE * resp(f"supervised@{n}") for n in cured}
    eh_better = {n: pck(f"easy_hard@{n}") > pck(f"supervised@{n}") for n in cured}
    claims.append(Claim(
        "easy_hard", "Easy-hard augmentation avoids the collapse and beats the supervised model",
        "COCO 1K: single network above supervised",
        "; ".join(f"{n} labels: PCK@0.1 {pck(f'easy_hard@{n}'):.3f} vs {pck(f'supervised@{n}'):.3f}, response "
                  f"{resp(f'easy_hard@{n}'):.3f}" for n in cured),
        all(eh_ok.values()) and all(eh_better.values()),
        "" if all(eh_ok.values()) and all(eh_better.values()) else _easy_hard_note(eh_ok, eh_better)))

    dual_best = {n: pck(f"dual@{n}") >= max(pck(f"easy_hard@{n}"), pck(f"supervised@{n}"),
                                             pck(f"consistency@{n}")) for n in cured}
    claims.append(Claim(
        "dual", "Dual networks are the best of the four", "best at every labelled-set size",
        "; ".join(f"{n} labels: PCK@0.1 {pck(f'dual@{n}'):.3f}" for n in cured)
        + f" (best at {sum(dual_best.values())} of {len(cured)})",
        all(dual_best.values()), "" if all(dual_best.values()) else
        "the dual student learns from the other network's easy views, which are no better than its own here"))

    pairs = {r["hard"]: pck(name) for name, r in runs.items() if name.startswith("pair-")}
    if "same" in pairs:
        pairs["all"] = pck(f"easy_hard@{n0}")
        harder = [v for v in pairs if v not in ("same", "all")]
        beats = [v for v in harder if pairs[v] > pairs["same"]]
        claims.append(Claim(
            "pairs", "A harder student view gives better accuracy than two views from the same distribution",
            "Fig. 5: JC and RA hard views beat the same-distribution pair",
            ", ".join(f"{v} {p:.3f}" for v, p in pairs.items()) + " (PCK@0.1)",
            len(beats) == len(harder), "" if len(beats) == len(harder) else
            f"{', '.join(v for v in harder if v not in beats)} did not beat 'same': at 64 px the cut-out or "
            "distorted student views may lose too much of the person"))
    return claims


def _collapse_note(m: dict, n: int, collapsed: bool, below: bool) -> str:
    curve = m["runs"][f"consistency@{n}"]["curves"]["response"]
    parts = []
    if not collapsed:
        parts.append(f"the response fell {100 * response_drop(curve):.0f}% from its peak but not to "
                     f"{COLLAPSE_SHARE:g}x supervised within {m['iterations']} steps")
    if not below:
        best = m["runs"][f"consistency@{n}"]["best_pck"]
        final = m["runs"][f"consistency@{n}"]["final"]["pck@0.1"]
        parts.append(f"accuracy fell from its best PCK@0.1 {best:.3f} to {final:.3f} but was not below "
                     "supervised at the end")
    return "; ".join(parts)


def _below(m: dict, n: int) -> str:
    """Which of response and accuracy of consistency ended below supervised at ``n`` labels, in words."""
    resp = _final(m, f"consistency@{n}", "response") < _final(m, f"supervised@{n}", "response")
    pck = _final(m, f"consistency@{n}", "pck@0.1") < _final(m, f"supervised@{n}", "pck@0.1")
    return {(True, True): "response and accuracy below", (True, False): "response below, accuracy not",
            (False, True): "accuracy below, response not", (False, False): "neither below"}[(resp, pck)]


def _labels_note(m: dict, sizes: list, n0: int) -> str:
    parts = "; ".join(f"{n} labels: {_below(m, n)}" for n in sizes)
    return (parts + f" supervised after {m['iterations']} steps: with more labels the supervised term holds the "
            "response up longer, and the collapse had not reached the accuracy yet")


def _weight_note(m: dict, weights: list, n0: int) -> str:
    runs = m["runs"]
    supervised = _final(m, f"supervised@{n0}", "pck@0.1")
    parts = "; ".join(f"lambda {runs[w]['weight']:g}: response {100 * response_drop(runs[w]['curves']['response']):.0f}"
                      f"% below its peak, PCK@0.1 {'above' if _final(m, w, 'pck@0.1') > supervised else 'not above'} "
                      "supervised" for w in weights)
    return parts + ": a smaller weight slows the fall, which had not reached the accuracy within the run"


def _easy_hard_note(ok: dict, better: dict) -> str:
    if not all(ok.values()):
        return "its response also fell: " + ", ".join(f"{n} labels" for n, v in ok.items() if not v)
    return ("no collapse, but accuracy not above supervised at " + ", ".join(f"{n} labels" for n, v in better.items()
                                                                          if not v)
            + ": a tiny network learning from hard views of few unlabelled images over a short run")
