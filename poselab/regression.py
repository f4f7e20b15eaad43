"""Trained numbers checked with tolerances measured across CPU kernels and thread counts.

Training results are bitwise reproducible on one machine at one thread count, but not across
CPUs: PyTorch picks its kernels by instruction set (``ATEN_CPU_CAPABILITY`` = ``default``,
``avx2``, ``avx512``; ARM has its own), and rounding differences grow through training. So a
reference of an experiment's ``fast`` results is a value *and a tolerance* per quantity:

- every run of the experiment under each setting gives one value per quantity (a leaf of
  ``Results.to_dict()["metrics"]``, path ``a/b/c``, plus ``claims/<id>/holds``);
- the reference value is the middle of the measured range, the **spread** is its width
  (max - min), and the tolerance is ``MARGIN * spread`` (floored at ``REL_FLOOR * |value|``
  for real numbers, so that a quantity equal under every measured setting still allows the
  last digits to move on an untried CPU);
- a quantity that is not a real number (an int, a flag, a text, a claim's verdict) must match
  exactly when every setting agreed; when settings disagreed it is recorded as ``unstable``,
  with the values seen, and not compared.

This module flattens results, builds references from runs, compares a run with a reference, and
measures and writes the references (``python -m poselab regression --refresh``: every experiment
in a fresh process under each of :func:`available_settings`, each with its own render cache).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MARGIN = 3.0
"""Tolerance = MARGIN x the spread measured across settings."""

TIMING = re.compile(r"(^|_)(seconds|ms)($|_)")
"""Keys of timings (``train_seconds``, ``step_ms``): wall-clock measurements, never compared."""

REL_FLOOR = 1e-6
"""Smallest relative tolerance of a real number (for quantities with zero measured spread)."""

SETTINGS = tuple((cap, threads) for cap in ("default", "avx2", "avx512") for threads in (1, 2))
"""``(ATEN_CPU_CAPABILITY, OMP_NUM_THREADS)`` pairs the spread is measured over (avx512 where the CPU has it)."""


def timed_claims(experiment: str) -> frozenset[str]:
    """Ids of the claims of ``experiment`` decided by timings (its module's ``TIMED_CLAIMS``)."""
    import importlib

    from poselab.experiments import EXPERIMENTS

    if experiment not in EXPERIMENTS:
        return frozenset()
    return getattr(importlib.import_module(EXPERIMENTS[experiment]), "TIMED_CLAIMS", frozenset())


def flatten(results: Mapping[str, Any]) -> dict[str, Any]:
    """The quantities of a ``Results.to_dict()`` document, as ``{path: scalar}``.

    Metrics leaves are numbers, flags, texts or None (a non-finite float); lists are indexed
    (``history/3/loss``). Each claim contributes ``claims/<id>/holds``. Timings (keys matching
    :data:`TIMING`) are left out: they measure the machine, not the numerics; so are the verdicts
    of claims decided by timings (:func:`timed_claims`).
    """
    if not isinstance(results, Mapping) or "metrics" not in results or "claims" not in results:
        got = sorted(results) if isinstance(results, Mapping) else type(results).__name__
        raise ValueError(f"results: expected a Results.to_dict() document with 'metrics' and 'claims', got {got}")
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not TIMING.search(str(key)):
                    walk(f"{prefix}/{key}", item)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{prefix}/{i}", item)
        else:
            out[prefix] = value

    walk("metrics", results["metrics"])
    timed = timed_claims(results.get("experiment", ""))
    for claim in results["claims"]:
        if claim["id"] not in timed:
            out[f"claims/{claim['id']}/holds"] = claim["holds"]
    return out


def build_reference(runs: Mapping[str, Mapping[str, Any]], margin: float = MARGIN) -> dict[str, Any]:
    """A reference from one ``Results.to_dict()`` document per setting (``{"avx2/1": doc, ...}``).

    Returns ``{"settings": [...], "margin": margin, "quantities": {path: entry}}`` where an entry
    is ``{"value", "spread", "tolerance"}`` for a real number, ``{"value"}`` for an exact one and
    ``{"unstable": [values seen]}`` for a non-real quantity the settings disagreed on.
    """
    if len(runs) < 2:
        raise ValueError(f"runs: expected the results of at least 2 settings to measure a spread, got {len(runs)}")
    flat = {setting: flatten(doc) for setting, doc in runs.items()}
    paths = set.union(*(set(f) for f in flat.values()))
    quantities = {}
    for path in sorted(paths):
        values = [f.get(path, "<absent>") for f in flat.values()]
        if all(isinstance(v, float) and math.isfinite(v) for v in values):
            lo, hi = min(values), max(values)
            mid = (lo + hi) / 2
            quantities[path] = {"value": mid, "spread": hi - lo,
                                "tolerance": max(margin * (hi - lo), REL_FLOOR * abs(mid))}
        elif all(v == values[0] and type(v) is type(values[0]) for v in values):
            quantities[path] = {"value": values[0]}
        else:
            quantities[path] = {"unstable": sorted({repr(v) for v in values})}
    return {"settings": sorted(runs), "margin": margin, "quantities": quantities}


def compare(results: Mapping[str, Any], reference: Mapping[str, Any]) -> list[str]:
    """What in ``results`` (a ``Results.to_dict()`` document) falls outside ``reference``.

    Returns one line per differing quantity (empty when everything is within tolerance);
    quantities present on only one side are reported too.
    """
    flat = flatten(results)
    expected = reference["quantities"]
    problems = [f"{path}: missing from the run (the reference has it)" for path in sorted(set(expected) - set(flat))]
    problems += [f"{path}: not in the reference (new quantity)" for path in sorted(set(flat) - set(expected))]
    for path in sorted(set(flat) & set(expected)):
        entry, got = expected[path], flat[path]
        if "unstable" in entry:
            continue
        want = entry["value"]
        if "tolerance" in entry:
            ok = isinstance(got, (int, float)) and not isinstance(got, bool) and abs(got - want) <= entry["tolerance"]
            if not ok:
                problems.append(f"{path}: {got!r}, expected {want:.6g} +- {entry['tolerance']:.3g} "
                                f"(measured spread {entry['spread']:.3g})")
        elif got != want or type(got) is not type(want):
            problems.append(f"{path}: {got!r}, expected exactly {want!r}")
    return problems


def describe(reference: Mapping[str, Any], top: int = 10) -> str:
    """A short report: how many quantities are checked how, and the widest relative spreads."""
    q = reference["quantities"]
    real = {p: e for p, e in q.items() if "tolerance" in e}
    exact = [p for p, e in q.items() if "value" in e and "tolerance" not in e]
    unstable = [p for p, e in q.items() if "unstable" in e]
    lines = [f"{len(real)} real quantities with tolerances, {len(exact)} exact, {len(unstable)} unstable "
             f"(settings {', '.join(reference['settings'])})"]
    widest = sorted(real.items(), key=lambda pe: -pe[1]["spread"] / max(abs(pe[1]["value"]), 1e-12))[:top]
    lines += [f"  {p}: {e['value']:.6g}, spread {e['spread']:.3g} ({100 * e['spread'] / max(abs(e['value']), 1e-12):.2f} %)"
              for p, e in widest]
    lines += [f"  unstable {p}: {', '.join(q[p]['unstable'])}" for p in unstable[:top]]
    return "\n".join(lines)



# ------------------------------------------------------------------ measuring and storing references

PROFILE = "fast"
SEED = 0
REFERENCE_DIR = Path(__file__).resolve().parent.parent / "tests" / "regression"
"""Where the committed references live in a source checkout (one ``<experiment>.json`` each)."""

REFRESH_COMMAND = "python -m poselab regression --refresh"


def cpu_capability(env: Mapping[str, str] | None = None) -> str:
    """The kernel set PyTorch uses in a fresh process with ``env`` (``"AVX512"``, ``"AVX2"``,
    ``"DEFAULT"``, ...): what ``ATEN_CPU_CAPABILITY`` actually selects on this CPU."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    out = subprocess.run([sys.executable, "-c", code], env=dict(env if env is not None else os.environ),
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def available_settings() -> list[tuple[str, int]]:
    """The :data:`SETTINGS` this CPU can run: a capability is kept only when a process started with it
    reports it (PyTorch silently falls back to a lower one that the CPU has)."""
    base = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    usable = {cap for cap in {c for c, _ in SETTINGS}
              if cpu_capability({**base, "ATEN_CPU_CAPABILITY": cap}).lower() == cap}
    return [(cap, threads) for cap, threads in SETTINGS if cap in usable]


def setting_name(setting: tuple[str, int]) -> str:
    """``("avx2", 1)`` -> ``"avx2/1"`` (the key of a run in a reference)."""
    return f"{setting[0]}/{setting[1]}"


def setting_env(setting: tuple[str, int], cache_dir: Path) -> dict[str, str]:
    """The environment of a measuring process: capability, thread counts and its own render cache
    (rendered images are computed numbers too: a cache shared between settings would hide their spread)."""
    cap, threads = setting
    return {**os.environ, "ATEN_CPU_CAPABILITY": cap, "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads), "POSELAB_CACHE_DIR": str(cache_dir)}


def measure(experiment: str, setting: tuple[str, int], workdir: Path) -> dict:
    """Run ``experiment`` at :data:`PROFILE` (seed :data:`SEED`, CPU) in a fresh process under
    ``setting`` and return its ``Results.to_dict()`` document (timings included).

    Raises ``RuntimeError`` with the process's last lines when it fails.
    """
    tag = setting_name(setting).replace("/", "-")
    out = workdir / f"{experiment}-{tag}.json"
    cmd = [sys.executable, "-m", "poselab", "reproduce", experiment, "--profile", PROFILE, "--device", "cpu",
           "--seed", str(SEED), "--quiet", "--out", str(out)]
    proc = subprocess.run(cmd, env=setting_env(setting, workdir / f"cache-{tag}"), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{experiment} under {setting_name(setting)} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(out.read_text())


def reference_path(experiment: str, folder: Path | None = None) -> Path:
    """The committed reference of ``experiment``: ``<folder>/<experiment>.json`` (default :data:`REFERENCE_DIR`)."""
    return Path(folder if folder is not None else REFERENCE_DIR) / f"{experiment}.json"


def load_reference(experiment: str, folder: Path | None = None) -> dict:
    """Read a reference written by :func:`refresh`; a missing one says how to make it."""
    path = reference_path(experiment, folder)
    if not path.is_file():
        raise FileNotFoundError(f"regression reference {str(path)!r} does not exist; make it with {REFRESH_COMMAND}")
    ref = json.loads(path.read_text())
    if not isinstance(ref, dict) or "quantities" not in ref or ref.get("experiment") != experiment:
        raise ValueError(f"regression reference {str(path)!r} is not a reference of {experiment!r}; "
                         f"regenerate it with {REFRESH_COMMAND}")
    return ref


def refresh(experiments: Sequence[str], settings: Sequence[tuple[str, int]], folder: Path | None = None,
            jobs: int = 1, log=print) -> list[Path]:
    """Measure every experiment under every setting and write one reference per experiment.

    Each run is a separate process (:func:`measure`); ``jobs`` of them run at once (the results do not
    depend on how busy the machine is, only the wall time does). A reference records, besides the
    quantities of :func:`build_reference`, the experiment, profile, seed, torch version, CPU and
    this command. Returns the written paths.
    """
    import torch

    if len(settings) < 2:
        raise ValueError(f"settings: expected at least 2 to measure a spread, got {len(settings)}")
    folder = Path(folder if folder is not None else REFERENCE_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="poselab-regression-") as tmp, \
            ThreadPoolExecutor(max_workers=jobs) as pool:
        work = Path(tmp)
        for experiment in experiments:
            start = time.perf_counter()
            futures = {setting_name(s): pool.submit(measure, experiment, s, work) for s in settings}
            runs = {name: f.result() for name, f in futures.items()}
            ref = build_reference(runs)
            ref = {"experiment": experiment, "profile": PROFILE, "seed": SEED, "command": REFRESH_COMMAND,
                   "torch": torch.__version__, "cpu": _cpu_model(), **ref}
            path = reference_path(experiment, folder)
            tmp_path = path.with_name(path.name + ".tmp")
            tmp_path.write_text(json.dumps(ref, indent=1, sort_keys=False) + "\n")
            os.replace(tmp_path, path)
            written.append(path)
            log(f"{experiment}: {len(settings)} settings in {time.perf_counter() - start:.0f} s -> {path}")
            log(describe(ref))
    return written


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
