"""Shared fixtures: one ``fast`` run per experiment for the whole session.

Every experiment's ``fast`` run (CPU, seed 0) is computed at most once per test session and
shared by the experiment's own tests, the numeric regression test (``tests/test_regression.py``)
and the determinism check against the same run executed in its chapter
(``tests/test_notebooks.py``). It runs with a checkpoint folder, so that resume tests can rerun it
from the finished checkpoints instead of training again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from poselab.results import Results


@dataclass(frozen=True)
class FastRun:
    """An experiment's ``fast`` run and the folder that holds its checkpoints."""

    results: Results
    checkpoint_dir: Path


@pytest.fixture(scope="session")
def fast_run(tmp_path_factory):
    """``fast_run(name) -> FastRun``: ``run_experiment(name, "fast", device="cpu", seed=0)``, once per session."""
    from poselab.experiments import run_experiment

    runs: dict[str, FastRun] = {}

    def get(name: str) -> FastRun:
        if name not in runs:
            folder = tmp_path_factory.mktemp(f"checkpoints-{name}")
            results = run_experiment(name, profile="fast", device="cpu", seed=0, progress=False, checkpoint_dir=folder)
            runs[name] = FastRun(results, folder)
        return runs[name]

    return get
