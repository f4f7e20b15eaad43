"""One module per chapter. Each has ``run(profile, device, seed, progress, checkpoint_dir, resume) -> Results``."""

from __future__ import annotations

import importlib

from poselab.checks import check_choice, check_profile, check_seed
from poselab.results import Results

EXPERIMENTS = {
    "data": "poselab.experiments.data",  # chapter 0
    "landscapes": "poselab.experiments.landscapes",  # chapter 1
    "flat_ensembles": "poselab.experiments.flat_ensembles",  # chapter 2
    "seal": "poselab.experiments.seal",  # chapter 3
    "meta_tto": "poselab.experiments.meta_tto",  # chapter 4
    "ssl_collapse": "poselab.experiments.ssl_collapse",  # chapter 5
    "hamipose": "poselab.experiments.hamipose",  # chapter 6
}
"""Experiment name -> module. The chapter that shows each one is named in its module docstring."""

SEED_HEADROOM = 2
"""Experiments also seed with ``seed + 1`` and ``seed + 2``, so ``seed`` goes up to
``2**32 - 1 - SEED_HEADROOM`` (:func:`poselab.checks.check_seed`)."""


def run_experiment(name: str, profile: str = "book", device: str = "auto", seed: int = 0,
                   progress: bool = True, checkpoint_dir: str | None = None, resume: bool = True) -> Results:
    """Run experiment ``name`` at ``profile`` and return its :class:`~poselab.results.Results`.

    With ``checkpoint_dir``, training checkpoints every epoch into that folder and a rerun
    resumes where the last one stopped (e.g. a folder on Google Drive, on Colab). With
    ``resume=False`` existing checkpoints are ignored and overwritten (a fresh run).
    """
    check_choice("experiment", name, tuple(EXPERIMENTS))
    check_profile(profile)
    check_seed(seed, headroom=SEED_HEADROOM)
    if not isinstance(resume, bool):
        raise TypeError(f"resume: expected a bool, got {type(resume).__name__} {resume!r}")
    module = importlib.import_module(EXPERIMENTS[name])
    return module.run(profile=profile, device=device, seed=seed, progress=progress, checkpoint_dir=checkpoint_dir,
                      resume=resume)
