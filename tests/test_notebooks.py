"""Every chapter executed with papermill at PROFILE="fast", book conventions, and a render of the book.

nbval (``--nbval-lax``, cells tagged ``nbval-check-output``) re-runs the references in
``tests/nbval/``; :func:`test_references_match_chapters` keeps those references in step
with the chapters.
"""

import json
import re

import nbformat
import pytest

from poselab import book, regression

CHAPTERS = book.chapter_notebooks()
pytestmark = pytest.mark.notebook


def _code_sources(nb):
    return [c.source for c in nb.cells
            if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]


def _results_path(executed_chapter):
    return executed_chapter.with_suffix(".results.json")


@pytest.fixture(scope="session")
def executed(tmp_path_factory):
    out = tmp_path_factory.mktemp("executed")
    return {nb: book.execute_chapter(nb, out / nb.name, profile="fast", device="cpu", seed=0,
                                     results_out=_results_path(out / nb.name)) for nb in CHAPTERS}


def test_the_book_has_chapters():
    assert CHAPTERS, "no chapter notebooks listed in _toc.yml"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_follows_the_conventions(chapter):
    nb = nbformat.read(chapter, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "import poselab" in code[0].source and re.search(r"pip\W+install", code[0].source), \
        "the first cell must install poselab when it is not importable (Colab)"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    for name in book.NOTEBOOK_PARAMETERS:
        assert re.search(rf"^{name} = ", params[0].source, re.M), f"parameters cell lacks {name}"
    assert 'PROFILE = "book"' in params[0].source
    headings = [c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("#")]
    assert "Paper vs this book" in headings[-1], "the chapter must end with its claims table"
    assert all(not c.outputs for c in code), "commit chapters without outputs (the book executes them)"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_executes_at_fast(chapter, executed):
    nb = nbformat.read(executed[chapter], as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and 'PROFILE = "fast"' in injected[0].source
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    markdown = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert any("| claim | paper | ours | status |" in m for m in markdown), "no claims table was displayed"
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs), "no plotly figure"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_run_is_bitwise_the_same_run_in_this_process(chapter, executed, fast_run):
    """Determinism: the chapter's experiment, run in its kernel (another process, same machine and
    environment), gives exactly the numbers of the session's own fast run (every metric and verdict;
    timings aside). The session's run also checkpoints and the chapter's does not: that must not
    change a digit either."""
    saved = json.loads(_results_path(executed[chapter]).read_text())
    assert (saved["profile"], saved["device"], saved["seed"]) == ("fast", "cpu", 0)
    ours = json.loads(json.dumps(fast_run(saved["experiment"]).results.to_dict()))
    theirs, mine = regression.flatten(saved), regression.flatten(ours)
    differ = sorted(k for k in set(theirs) | set(mine) if theirs.get(k, "<absent>") != mine.get(k, "<absent>"))
    assert not differ, f"{len(differ)} quantities differ between two identical runs, e.g. " + ", ".join(
        f"{k}: {theirs.get(k, '<absent>')!r} vs {mine.get(k, '<absent>')!r}" for k in differ[:5])


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_references_match_chapters(chapter):
    reference = book.REFERENCE_DIR / chapter.name
    assert reference.exists(), f"missing nbval reference {reference}: run python -m poselab book --refresh-references"
    assert _code_sources(nbformat.read(reference, as_version=4)) == _code_sources(nbformat.read(chapter, as_version=4)), \
        "the nbval reference is stale: run python -m poselab book --refresh-references"
    ref = nbformat.read(reference, as_version=4)
    checked = [c for c in ref.cells if "nbval-check-output" in c.metadata.get("tags", [])]
    assert checked and all(c.outputs for c in checked), "nbval must have outputs to compare"


def test_book_renders_offline(executed, tmp_path):
    stage = book.stage_book(tmp_path / "stage", executed)
    index = book.render(stage, tmp_path / "_build")
    assert index.exists()
    for chapter in CHAPTERS:
        page = (index.parent / "book" / f"{chapter.stem}.html").read_text()
        assert "Plotly.newPlot" in page, f"{chapter.stem}: plotly figures missing from the page"
        assert not re.search(r'<script[^>]+src="https?://[^"]*plotly', page), "plotly.js must be inline"
        assert "colab.research.google.com" in page, "Open-in-Colab button missing"
        assert "Paper vs this book" in page


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_checked_cells_do_not_depend_on_kernels(chapter):
    problems = book.portability_violations(nbformat.read(chapter, as_version=4))
    assert not problems, ("cells tagged nbval-check-output must print only what no CPU kernel changes "
                          "(trained numbers belong in the regression tests): " + "; ".join(problems))


def _notebook(*cells):
    return nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(src, metadata={"tags": [book.CHECKED_TAG]} if checked else {})
        for src, checked in cells])


def test_portability_rule_catches_results_read_in_a_checked_cell():
    nb = _notebook(("results = run_experiment('data', profile=PROFILE)\nm = results.metrics", False),
                   ("rows = [m[k] for k in m]", False),
                   ("print(rows)", True),                        # derived from results, two cells later
                   ("print(results.outline())", True),           # the portable view is allowed
                   ("for m in range(3):\n    print(m)", True),   # a name rebound in the cell is judged afresh
                   ("print(landscape.lambda_max(model, batch))", True))
    assert book.portability_violations(nb) == ["cell 2 reads experiment results (rows)",
                                                "cell 5 calls code that trains or iterates (lambda_max)"]


def test_portability_rule_follows_functions_that_read_results():
    nb = _notebook(("runs = exp.run('fast')['runs']", False),
                   ("def pck(name):\n    return runs[name]", False),
                   ("print(pck('a'))", True))
    assert book.portability_violations(nb) == ["cell 2 reads experiment results (pck)"]
