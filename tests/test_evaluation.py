import nbformat
import pytest
import torch

from poselab import book
from poselab.evaluation import LIFTING_METRICS, lifting_metrics, predict
from poselab.models.lifting import build_lifter


def test_batched_prediction_equals_one_pass_and_restores_the_mode():
    torch.manual_seed(0)
    model = build_lifter("mlp", hidden=16, num_blocks=1).train()
    x = torch.randn(10, 17, 2)
    out = predict(model, x, batch_size=3, device="cpu")
    assert model.training
    with torch.no_grad():
        torch.testing.assert_close(out, model.eval()(x))
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1"):
        predict(model, x, batch_size=0)


def test_lifting_metrics_known_values():
    target = torch.zeros(2, 17, 3)
    pred = target.clone()
    pred[..., 0] = 0.1  # every joint 100 mm off
    m = lifting_metrics(pred, target)
    assert tuple(m) == LIFTING_METRICS
    assert m["mpjpe_mm"] == pytest.approx(100.0) and m["pck150"] == 1.0


def test_a_chapter_without_parameters_is_rejected(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match=r"'parameters' cell must declare .*missing \['DEVICE', 'PROFILE', 'RESULTS_OUT', 'SEED'\]"):
        book.execute_chapter(path, tmp_path / "out.ipynb", profile="fast")
    with pytest.raises(ValueError, match="unknown profile"):
        book.execute_chapter(path, tmp_path / "out.ipynb", profile="quick")


def test_prepare_for_render_drops_widgets_and_turns_execution_off(tmp_path):
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("display_data", data={book.WIDGET_MIME: {}, "text/plain": "bar"}),
                    nbformat.v4.new_output("stream", text="kept")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell], metadata={"widgets": {"state": {}}}), path)
    book.prepare_for_render(path)
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.mystnb.execution_mode == "off" and "widgets" not in nb.metadata
    assert [o.output_type for o in nb.cells[0].outputs] == ["stream"]


def test_strip_reference_keeps_only_what_nbval_compares():
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from poselab.book import strip_reference

    checked = new_code_cell("print(1)", metadata={"tags": ["nbval-check-output"], "papermill": {"duration": 1.0},
                                                  "execution": {"iopub.status.idle": "now"}})
    checked.outputs = [new_output("stream", name="stdout", text="1\n")]
    plain = new_code_cell("fig")
    plain.outputs = [new_output("display_data", data={"text/plain": "fig"})]
    nb = new_notebook(cells=[checked, plain], metadata={
        "widgets": {"state": {}}, "papermill": {"input_path": "/somewhere/ch.ipynb", "parameters": {"PROFILE": "fast"}}})
    strip_reference(nb)
    assert nb.metadata["papermill"] == {"parameters": {"PROFILE": "fast"}} and "widgets" not in nb.metadata
    assert checked.outputs and not plain.outputs
    assert "papermill" not in checked.metadata and "execution" not in checked.metadata
    nbformat.validate(nb)
