import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from poselab import viz
from poselab.data.cameras import make_rig
from poselab.data.skeleton import H36M17


def _pose(frames=None):
    gen = torch.Generator().manual_seed(0)
    shape = (17, 3) if frames is None else (frames, 17, 3)
    return torch.rand(shape, generator=gen) + torch.tensor([0.0, 0.5, 0.0])


def test_skeleton_animation_has_a_frame_per_stride_and_a_slider():
    fig = viz.skeleton_animation(_pose(10), H36M17, fps=30, stride=3)
    assert isinstance(fig, go.Figure)
    assert len(fig.frames) == 4  # frames 0, 3, 6, 9
    assert len(fig.layout.sliders[0].steps) == 4
    assert len(fig.data) == 3  # left, right, centre limbs


def test_limb_traces_hold_every_limb_once():
    fig = viz.skeleton_animation(_pose(1), H36M17)
    segments = sum(np.isnan(np.asarray(t.x, dtype=float)).sum() for t in fig.data)
    assert segments == len(H36M17.limbs)


def test_plot_axes_are_a_proper_rotation_with_y_up():
    pts = np.array([[1.0, 2.0, 3.0]])
    assert np.allclose(viz._to_plot_axes(pts), [[1.0, -3.0, 2.0]])


def test_camera_rig_and_projection_figures():
    rig = make_rig("studio")
    fig = viz.camera_rig_figure(rig, _pose(), H36M17, extra=[(rig[:2], "two", "#000")])
    assert [t.name for t in fig.data][-2:] == ["camera", "two"]
    fig = viz.projections_figure(rig.project(_pose()), rig.size, H36M17)
    assert len(fig.layout.annotations) == 4  # one title per view


@pytest.mark.parametrize("call, match", [
    (lambda: viz.skeleton_animation(torch.zeros(5, 16, 3), H36M17), r"joints: expected shape \(\*, 17, 3\)"),
    (lambda: viz.skeleton_animation(torch.zeros(5, 17, 3), H36M17, stride=0), "stride: expected an int >= 1"),
    (lambda: viz.projections_figure(torch.zeros(2, 17, 2), torch.zeros(3, 2), H36M17), r"sizes: expected shape \(2, 2\)"),
    (lambda: viz.curves_figure([1, 2], {"a": [1.0]}, "x", "y"), "series 'a': expected 2 values"),
])
def test_bad_input_is_rejected(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bars_curves_histogram():
    assert len(viz.bars_figure({"a": {"x": 1.0, "y": 2.0}, "b": {"x": 3.0}}, "mm").data) == 2
    assert len(viz.curves_figure([1, 2], {"a": [1.0, 2.0]}, "x", "y").data) == 1
    assert len(viz.histogram_figure({"a": torch.rand(10), "b": np.ones(4)}, "dar").data) == 2


# ------------------------------------------------------------------------ landscapes


def test_camera_to_upright_is_a_rotation_about_x():
    pts = np.array([[1.0, 2.0, 3.0]])
    assert np.allclose(viz.camera_to_upright(pts), [[1.0, -2.0, -3.0]])


def test_surface_figure_transposes_to_plotly_rows_and_checks_the_grid():
    a, b = np.linspace(-1, 1, 3), np.linspace(-1, 1, 4)
    loss = a[:, None] ** 2 + 2 * b[None, :] ** 2  # (3, 4)
    fig = viz.surface_figure(a, b, loss)
    surface, contour = fig.data[0], fig.data[1]
    assert np.asarray(surface.z).shape == (4, 3)  # plotly: z[y][x]
    assert np.allclose(np.asarray(contour.z), loss.T)
    with pytest.raises(ValueError, match="loss"):
        viz.surface_figure(a, b, loss.T)


def test_surfaces_figure_shares_one_colour_scale():
    a = np.linspace(-1, 1, 3)
    fig = viz.surfaces_figure(a, a, {"low": np.zeros((3, 3)), "high": np.full((3, 3), 5.0)})
    assert [(t.zmin, t.zmax) for t in fig.data] == [(0.0, 5.0), (0.0, 5.0)]
    assert [t.showscale for t in fig.data] == [False, True]


def test_landscape_walk_figure_has_one_frame_per_step_starting_at_zero():
    alphas = np.linspace(-1, 1, 5)
    poses = torch.stack([_pose() * (1 + a) for a in alphas])
    fig = viz.landscape_walk_figure(alphas, alphas ** 2, poses, _pose(), H36M17)
    assert len(fig.frames) == 5
    assert fig.layout.sliders[0].active == 2  # alpha = 0, the trained solution
    assert fig.data[1].x == (0.0,)  # the marker starts at alpha = 0
    assert all(len(f.data) == len(fig.data) - 1 for f in fig.frames)  # every trace but the fixed curve
    with pytest.raises(ValueError, match="poses"):
        viz.landscape_walk_figure(alphas, alphas ** 2, poses[:4], _pose(), H36M17)


def test_landscape_walk_widget_redraws_on_the_slider():
    import ipywidgets as widgets

    calls = []

    def predict_at(a):
        calls.append(a)
        return _pose()

    box = viz.landscape_walk_widget(predict_at, np.linspace(-1, 1, 5), np.linspace(0, 1, 5), _pose(), H36M17)
    assert isinstance(box, widgets.VBox)
    slider, out = box.children
    (first,) = out.outputs
    slider.value = 0.5
    assert calls == [0.0, 0.5]
    (shown,) = out.outputs  # one figure, replaced on every move
    assert set(shown["data"]) == {"application/vnd.plotly.v1+json", "text/html", "text/plain"}
    assert shown["data"]["text/html"] != first["data"]["text/html"]


def test_curves_grid_figure_keeps_one_colour_per_series():
    fig = viz.curves_grid_figure([0, 1], {"a": {"x": [1, 2], "y": [2, 3]}, "b": {"x": [0, 1], "y": [1, 1]}},
                                 xlabel="s", ylabel="mm")
    colours = {(t.name, t.line.color) for t in fig.data}
    assert len(colours) == 2 and sum(t.showlegend for t in fig.data) == 2
    with pytest.raises(ValueError, match="series 'y'"):
        viz.curves_grid_figure([0, 1], {"a": {"y": [1]}}, xlabel="s", ylabel="mm")
    with pytest.raises(ValueError, match="at least one panel"):
        viz.curves_grid_figure([0, 1], {}, xlabel="s", ylabel="mm")


# ------------------------------------------------------------------------ pose overlays


def _overlay_poses(n=4, names=("ground truth", "baseline", "SEAL (margin)")):
    base = _pose(n) - _pose(n)[:, :1]  # root-relative, camera frame
    return {name: base + 0.01 * k for k, name in enumerate(names)}


def test_poses_overlay_figure_one_trace_per_name_and_a_step_per_sample():
    poses = _overlay_poses(4)
    labels = [f"sample {i}: baseline {80 + i} mm, SEAL {60 + i} mm" for i in range(4)]
    fig = viz.poses_overlay_figure(poses, H36M17, labels=labels, title="overlay")
    assert [t.name for t in fig.data] == list(poses)  # legend by name
    assert len({t.line.color for t in fig.data}) == 3  # one colour per name
    assert len(fig.frames) == 4 and all(len(f.data) == 3 for f in fig.frames)
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == labels
    assert [list(s.args[0]) for s in steps] == [["0"], ["1"], ["2"], ["3"]]
    assert fig.layout.title.text == "overlay"
    assert fig.layout.sliders[0].currentvalue.font.color != fig.layout.sliders[0].font.color  # current label shown
    # every limb of the skeleton is drawn once per name (NaN-separated segments)
    assert all(np.isnan(np.asarray(t.x, dtype=float)).sum() == len(H36M17.limbs) for t in fig.data)


def test_poses_overlay_figure_draws_the_camera_frame_upright():
    poses = {"a": torch.tensor([[[0.0, 0.0, 0.0]] * 16 + [[0.1, -0.5, 0.2]]])}  # 0.5 m above the root (y down)
    fig = viz.poses_overlay_figure(poses, H36M17)
    expected = viz._to_plot_axes(viz.camera_to_upright(np.array([0.1, -0.5, 0.2])))
    pts = np.stack([np.asarray(fig.data[0][k], dtype=float) for k in "xyz"], axis=1)
    assert np.isclose(pts, expected).all(axis=1).any()
    assert expected[2] == pytest.approx(0.5)  # plotly's up axis
    z_range = fig.layout.scene.zaxis.range
    assert z_range[0] < 0 < 0.5 < z_range[1]


def test_poses_overlay_figure_default_labels_and_max_samples():
    fig = viz.poses_overlay_figure(_overlay_poses(6), H36M17, max_samples=2)
    assert len(fig.frames) == 2
    assert [s.label for s in fig.layout.sliders[0].steps] == ["sample 0", "sample 1"]
    fig = viz.poses_overlay_figure({"only": _pose(3).numpy()}, H36M17, max_samples=10)
    assert len(fig.frames) == 3 and len(fig.data) == 1


@pytest.mark.parametrize("call, match", [
    (lambda: viz.poses_overlay_figure({}, H36M17), "poses: expected a non-empty dict.*got an empty dict"),
    (lambda: viz.poses_overlay_figure([_pose(2)], H36M17), "poses: expected a non-empty dict.*got list"),
    (lambda: viz.poses_overlay_figure({"a": _pose(3), "b": _pose(2)}, H36M17),
     r"shape of 'a' \(3, 17, 3\).*'b' \(2, 17, 3\)"),
    (lambda: viz.poses_overlay_figure({"a": torch.zeros(2, 31, 3)}, H36M17),
     r"poses\['a'\]: expected shape \(\*, 17, 3\), got \(2, 31, 3\)"),
    (lambda: viz.poses_overlay_figure({"a": torch.zeros(17, 3)}, H36M17), r"poses\['a'\]: expected shape"),
    (lambda: viz.poses_overlay_figure({"a": torch.zeros(0, 17, 3)}, H36M17), "at least one sample"),
    (lambda: viz.poses_overlay_figure({"a": _pose(3)}, H36M17, labels=["x", "y"]),
     r"labels: expected one label per sample \(3\), got 2 labels"),
    (lambda: viz.poses_overlay_figure({"a": _pose(3)}, H36M17, max_samples=0), "max_samples: expected an int >= 1"),
    (lambda: viz.poses_overlay_figure({1: _pose(3)}, H36M17), "names must be non-empty strings"),
])
def test_poses_overlay_figure_rejects_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_poses_overlay_figure_on_cmu31():
    from poselab.data.skeleton import CMU31

    poses = {"truth": torch.randn(2, 31, 3), "pred": torch.randn(2, 31, 3)}
    fig = viz.poses_overlay_figure(poses, CMU31)
    assert len(fig.data) == 2 and all(np.isnan(np.asarray(t.x, dtype=float)).sum() == 30 for t in fig.data)
