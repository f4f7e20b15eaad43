"""Execute the chapters and render the book.

Pipeline: each chapter notebook is executed once with papermill (its ``parameters`` cell
overridden with the profile, device and seed) into a staging copy of the book; the staged
copies are marked "do not execute" and jupyter-book renders them to ``_build/html``.
Executing with papermill ourselves (rather than letting the renderer execute) is what
lets the profile be a parameter and lets the tests reuse the same code.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

from poselab.checks import check_profile

REPO_ROOT = Path(__file__).resolve().parents[1]
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
NOTEBOOK_PARAMETERS = ("PROFILE", "DEVICE", "SEED", "RESULTS_OUT")
CELL_TIMEOUT_S = 3 * 3600
"""Seconds: a cell that runs longer fails the execution instead of blocking it for ever."""
REFERENCE_DIR = REPO_ROOT / "tests" / "nbval"
"""Chapters executed at ``PROFILE="fast"``: nbval re-runs them and compares the tagged cells."""


def _toc_files(entries: list) -> list[str]:
    files = []
    for entry in entries or []:
        if "file" in entry:
            files.append(entry["file"])
        for key in ("chapters", "sections", "parts"):
            files += _toc_files(entry.get(key, []))
    return files


def chapter_notebooks(root: Path = REPO_ROOT) -> list[Path]:
    """The ``.ipynb`` chapters listed in ``_toc.yml``, in book order."""
    toc_path = root / "_toc.yml"
    if not toc_path.exists():
        raise FileNotFoundError(f"{toc_path}: the book's table of contents is missing")
    toc = yaml.safe_load(toc_path.read_text())
    out = []
    for rel in _toc_files(toc.get("chapters", []) + toc.get("parts", [])):
        path = root / (rel if rel.endswith(".ipynb") else rel + ".ipynb")
        if path.exists():
            out.append(path)
    return out


def execution_env(threads: int | None = None) -> dict[str, str]:
    """Environment for executing chapters: inline plotly.js (figures survive offline), pinned threads."""
    # plotly's default renderer under papermill emits only JSON, which the HTML book drops.
    env = {"PLOTLY_RENDERER": "plotly_mimetype+notebook"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def execute_chapter(src: Path, dst: Path, profile: str = "book", device: str = "auto", seed: int = 0,
                    progress: bool = False, results_out: Path | None = None) -> Path:
    """Execute notebook ``src`` with papermill into ``dst`` at ``profile``; return ``dst``.

    With ``results_out`` the chapter also saves its experiment's results there as JSON
    (``Results.save``; the chapter's ``RESULTS_OUT`` parameter).

    Raises ``ValueError`` when the notebook's parameters cell does not declare every one of
    :data:`NOTEBOOK_PARAMETERS` (papermill would only warn), and
    ``papermill.PapermillExecutionError`` when a cell fails.
    """
    import papermill

    check_profile(profile)
    src, dst = Path(src), Path(dst)
    declared = set(papermill.inspect_notebook(str(src)))
    missing = set(NOTEBOOK_PARAMETERS) - declared
    if missing:
        raise ValueError(f"{src}: the 'parameters' cell must declare {sorted(NOTEBOOK_PARAMETERS)}; "
                         f"missing {sorted(missing)}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in execution_env()}
    os.environ.update(execution_env())  # the kernel inherits this process's environment
    try:
        papermill.execute_notebook(str(src), str(dst), parameters=dict(PROFILE=profile, DEVICE=device, SEED=seed,
                                                   RESULTS_OUT=None if results_out is None else str(results_out)),
                                   kernel_name="python3", cwd=str(src.parent), progress_bar=progress,
                                   execution_timeout=CELL_TIMEOUT_S)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return dst


def prepare_for_render(path: Path) -> None:
    """Mark an executed notebook "do not execute" and drop progress-bar widget outputs.

    Widget outputs (tqdm bars) need the Jupyter widget manager from a CDN and show
    nothing useful in a static page; their text fallback is kept out too.
    """
    nb = nbformat.read(path, as_version=4)
    nb.metadata.setdefault("mystnb", {})["execution_mode"] = "off"
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", []) if WIDGET_MIME not in o.get("data", {})]
    nbformat.write(nb, path)


def stage_book(stage: Path, executed: dict[Path, Path], root: Path = REPO_ROOT) -> Path:
    """Copy the book sources to ``stage`` with the executed chapters in place of the originals."""
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, stage / name)
    shutil.copytree(root / "book", stage / "book", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for src, done in executed.items():
        target = stage / Path(src).resolve().relative_to(root.resolve())
        shutil.copy2(done, target)
        prepare_for_render(target)
    return stage


def render(stage: Path, output: Path) -> Path:
    """Render a staged book with jupyter-book into ``output/html``; return ``index.html``.

    Warnings are errors (``-W --keep-going``), so a broken page fails the build.
    """
    output = Path(output)
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(stage), "--path-output", str(output.parent),
           "-W", "--keep-going", "--all"]
    # jupyter-book writes to <path-output>/_build/html; we ask for output = <parent>/_build.
    if output.name != "_build":
        raise ValueError(f"output: expected a folder named '_build', got {output}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    index = output / "html" / "index.html"
    if not index.exists():
        raise RuntimeError(f"jupyter-book finished but {index} is missing:\n{proc.stdout[-2000:]}")
    return index


def build_book(profile: str = "book", device: str = "auto", seed: int = 0, root: Path = REPO_ROOT,
               output: Path | None = None, progress: bool = True) -> Path:
    """Execute every chapter at ``profile`` and render the book; return the path of ``index.html``."""
    from tqdm.auto import tqdm

    check_profile(profile)
    output = Path(output) if output is not None else root / "_build"
    executed_dir = output / "executed"
    executed = {}
    for nb in tqdm(chapter_notebooks(root), desc=f"chapters ({profile})", disable=not progress):
        executed[nb] = execute_chapter(nb, executed_dir / nb.name, profile=profile, device=device, seed=seed)
    stage = stage_book(output / "stage", executed, root)
    return render(stage, output)


def refresh_references(root: Path = REPO_ROOT, progress: bool = True) -> list[Path]:
    """Re-execute every chapter at ``fast`` into ``tests/nbval/`` (the nbval references).

    Run this (``python -m poselab book --refresh-references``) after editing a chapter, on a
    machine with the CI thread count (2), and commit the result.
    """
    from tqdm.auto import tqdm

    out = []
    for nb in tqdm(chapter_notebooks(root), desc="references", disable=not progress):
        # device="cpu": the references are CPU numbers, and nbval re-runs the injected parameters.
        dst = execute_chapter(nb, REFERENCE_DIR / nb.name, profile="fast", device="cpu")
        reference = nbformat.read(dst, as_version=4)
        strip_reference(reference)
        nbformat.write(reference, dst)
        out.append(dst)
    return out


def strip_reference(nb) -> None:
    """Keep an nbval reference small and diff-friendly, in place: only the outputs nbval compares
    (cells tagged ``nbval-check-output``), no widget state, no run metadata (local paths, times)."""
    nb.metadata.pop("widgets", None)
    papermill = nb.metadata.get("papermill", {})
    nb.metadata["papermill"] = {"parameters": papermill.get("parameters", {})}
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code" and "nbval-check-output" not in cell.metadata.get("tags", []):
            cell.outputs = []


# ------------------------------------------------------- what nbval may check

CHECKED_TAG = "nbval-check-output"
"""Cells with this tag are compared by nbval against ``tests/nbval/``."""

_EXPERIMENT_CALLS = {"run_experiment", "run"}
"""Calls whose return value is an experiment's (trained) results."""

_KERNEL_DEPENDENT_CALL = re.compile(r"run_experiment|^run$|train|fit|optimi[sz]e|lambda_max|power_iteration|hessian",
                                    re.IGNORECASE)
"""Calls that train or iterate: their outputs depend on floating-point kernel choice."""


def _called_names(node: ast.AST) -> set[str]:
    names = set()
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
        f = call.func
        names.add(f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")
    return names


def _read_names(node: ast.AST) -> set[str]:
    """Names a piece of code reads, except ``x`` in ``x.outline()`` (:meth:`Results.outline` is portable)."""
    exempt = {id(n.func.value) for n in ast.walk(node) if isinstance(n, ast.Call)
              and isinstance(n.func, ast.Attribute) and n.func.attr == "outline"}
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and id(n) not in exempt}


def _bindings(tree: ast.AST) -> list[tuple[set[str], ast.AST]]:
    """``(names bound, code they are bound from)`` for every binding in ``tree``."""
    def targets(*nodes):
        return {n.id for t in nodes for n in ast.walk(t) if isinstance(n, ast.Name)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            out.append((targets(*node.targets), node.value))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and node.value is not None:
            out.append((targets(node.target), node.value))
        elif isinstance(node, (ast.For, ast.comprehension)):
            out.append((targets(node.target), node.iter))
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            out.append((targets(node.optional_vars), node.context_expr))
        elif isinstance(node, ast.FunctionDef):  # a function that reads results returns results
            out.append(({node.name}, node))
    return out


def portability_violations(nb) -> list[str]:
    """Cells tagged ``nbval-check-output`` whose output could depend on floating-point kernels.

    The rule: a checked cell may not read anything derived from an experiment's results
    (a name bound from ``run_experiment(...)``/``<module>.run(...)``, or from such a name, in
    any cell), except through :meth:`~poselab.results.Results.outline`, and may not call
    code that trains or iterates (``train*``, ``fit``, ``*optimise*``, ``lambda_max``, Hessians).
    Trained numbers differ between CPUs (AVX2, AVX-512, ARM) and thread counts; they are
    checked by the ``regression`` tests with measured tolerances instead.

    Returns one line per offending cell (empty when the notebook follows the rule).
    """
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    trees = []
    for i, cell in code:
        source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        trees.append((i, cell, ast.parse(source)))
    bindings = [b for _, _, tree in trees for b in _bindings(tree)]
    tainted = {name for names, value in bindings if _called_names(value) & _EXPERIMENT_CALLS for name in names}
    while True:  # propagate through every later use, whatever the cell order
        more = {name for names, value in bindings if _read_names(value) & tainted for name in names} - tainted
        if not more:
            break
        tainted |= more
    problems = []
    for i, cell, tree in trees:
        if CHECKED_TAG not in cell.metadata.get("tags", []):
            continue
        # Inside the cell, a name it binds itself (a loop variable) is judged by what it is bound from.
        local = _bindings(tree)
        here = tainted - {name for names, _ in local for name in names}
        while more := {name for names, value in local if _read_names(value) & here for name in names} - here:
            here |= more
        read = sorted(_read_names(tree) & here)
        called = sorted(n for n in _called_names(tree) if n and _KERNEL_DEPENDENT_CALL.search(n))
        if read:
            problems.append(f"cell {i} reads experiment results ({', '.join(read)})")
        if called:
            problems.append(f"cell {i} calls code that trains or iterates ({', '.join(called)})")
    return problems
