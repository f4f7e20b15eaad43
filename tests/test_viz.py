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


@pytest.mark.parametrize("shared_y, matched", [(True, "y"), (False, None)])
def test_curves_grid_figure_shares_y_axes_only_when_asked(shared_y, matched):
    panels = {"ratio": {"x": [0.4, 0.5]}, "loss": {"x": [1e-3, 2e-3]}}
    fig = viz.curves_grid_figure([0, 1], panels, xlabel="s", ylabel="", shared_y=shared_y)
    assert fig.layout.yaxis2.matches == matched  # the second panel follows the first's range only when shared
    with pytest.raises(TypeError, match="shared_y"):
        viz.curves_grid_figure([0, 1], panels, xlabel="s", ylabel="", shared_y="no")


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


# ------------------------------------------------------------------------ images


def _images(n=3, size=8):
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)


def _keypoints(n=3, size=8, offset=0.0):
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 17, 2, generator=gen) * (size - 1) + offset


def test_image_grid_figure_one_image_per_subplot_with_titles():
    from poselab.data.skeleton import COCO17

    fig = viz.image_grid_figure(_images(5), titles=[f"sample {i}" for i in range(5)], cols=3, scale=4)
    assert isinstance(fig, go.Figure)
    assert [t.type for t in fig.data] == ["image"] * 5
    assert [a.text for a in fig.layout.annotations] == [f"sample {i}" for i in range(5)]
    assert fig.layout.xaxis5.range == (-0.5, 7.5) and fig.layout.yaxis5.range == (7.5, -0.5)  # y down
    assert fig.layout.yaxis5.scaleanchor == "x5" and fig.layout.xaxis5.visible is False
    assert [(t.x0, t.y0, t.dx, t.dy) for t in fig.data[:1]] == [(0, 0, 1, 1)]  # pixel (0, 0) centred at (0, 0)
    assert fig.layout.width > 3 * 8 * 4 and fig.layout.height > 2 * 8 * 4  # 3 columns, 2 rows
    assert len(viz.image_grid_figure(_images(2)).layout.annotations) == 0  # no titles, no annotations
    assert len(viz.image_grid_figure(_images(2), {"a": _keypoints(2)}, COCO17, cols=6).data) == 2 + 2 * 2


def test_image_grid_figure_float_and_uint8_images_agree():
    images = _images(2)
    as_uint8 = viz.image_grid_figure(images)
    as_float = viz.image_grid_figure(images.float() / 255)
    as_numpy = viz.image_grid_figure(images.numpy())
    for a, b, c in zip(as_uint8.data, as_float.data, as_numpy.data):
        assert np.array_equal(np.asarray(a.z), np.asarray(b.z)) and np.array_equal(np.asarray(a.z), np.asarray(c.z))
    assert np.array_equal(np.asarray(as_uint8.data[1].z), images[1].permute(1, 2, 0).numpy())  # (H, W, 3)


def test_image_grid_figure_keypoints_per_label_and_at_their_pixels():
    from poselab.data.skeleton import COCO17

    kp = _keypoints(3)
    kp[1, 4] = torch.tensor([2.0, 5.0])  # image 1, joint 4 at column 2, row 5
    fig = viz.image_grid_figure(_images(3), {"truth": kp, "prediction": kp + 0.5}, COCO17,
                                colours={"truth": "#000", "prediction": "#fff"})
    scatters = [t for t in fig.data if t.type == "scatter"]
    assert len(scatters) == 2 * 3 * 2  # labels x images x (limbs, joints)
    assert [t.name for t in scatters if t.showlegend] == ["truth", "prediction"]  # legend once per label
    assert {t.name: t.marker.color for t in scatters if t.mode == "markers"} == {"truth": "#000", "prediction": "#fff"}
    joints = [t for t in scatters if t.mode == "markers" and t.name == "truth"]
    assert (joints[1].x[4], joints[1].y[4]) == (2.0, 5.0)
    assert joints[1].xaxis == "x2" and joints[1].yaxis == "y2"  # drawn over image 1
    limbs = [t for t in scatters if t.mode == "lines"]
    assert all(np.isnan(np.asarray(t.x, dtype=float)).sum() == len(COCO17.limbs) for t in limbs)
    assert set(joints[0].marker.symbol) == {"circle", "square", "diamond"}  # left, right, centre
    no_skeleton = viz.image_grid_figure(_images(3), {"a": torch.zeros(3, 5, 2)})
    assert [t.mode for t in no_skeleton.data[3:]] == ["markers"] * 3 and len(no_skeleton.data[3].x) == 5


def test_image_grid_figure_invisible_joints_are_hollow_without_limbs():
    from poselab.data.skeleton import COCO17

    visible = torch.ones(2, 17, dtype=torch.bool)
    visible[0, 9] = False  # left wrist: one limb (elbow -> wrist)
    fig = viz.image_grid_figure(_images(2), {"truth": _keypoints(2), "prediction": _keypoints(2)}, COCO17,
                                visible={"truth": visible})
    limbs0, joints0, limbs1, joints1, pred_limbs0, pred_joints0 = fig.data[2:8]
    assert joints0.marker.symbol[9] == "circle-open" and joints0.marker.symbol[7] == "circle"
    assert np.isnan(np.asarray(limbs0.x, dtype=float)).sum() == len(COCO17.limbs) - 1
    assert np.isnan(np.asarray(limbs1.x, dtype=float)).sum() == len(COCO17.limbs)
    assert "-open" not in "".join(pred_joints0.marker.symbol)  # visibility given for 'truth' only
    shared = viz.image_grid_figure(_images(2), {"a": _keypoints(2), "b": _keypoints(2)}, COCO17, visible=visible)
    assert shared.data[3].marker.symbol[9] == shared.data[7].marker.symbol[9] == "circle-open"


def test_heatmap_overlay_figure_one_heatmap_over_each_image():
    images = _images(3, size=8)
    heatmaps = torch.zeros(3, 2, 4, 4)  # stride 2
    heatmaps[:, 1, 1, 2] = 1.0
    fig = viz.heatmap_overlay_figure(images, heatmaps, titles=["a", "b", "c"], cols=2)
    assert [t.type for t in fig.data] == ["image", "heatmap"] * 3  # the heatmap over its image
    heat = fig.data[1::2]
    assert all((t.zmin, t.zmax) == (0.0, 1.0) for t in heat)
    assert [t.showscale for t in heat] == [False, False, True]  # one shared colour bar
    assert [t.xaxis for t in heat] == ["x", "x2", "x3"] and len(fig.layout.annotations) == 3
    z = np.asarray(heat[0].z)
    assert z.shape == (8, 8) and (heat[0].x0, heat[0].dx) == (0.0, 1.0)  # upsampled to image pixels
    # heatmap pixel (2, 1) covers image pixels 4..5 x 2..3 (pixel centres), its maximum in between
    assert np.unravel_index(z.argmax(), z.shape) in {(2, 4), (2, 5), (3, 4), (3, 5)}
    assert z[2:4, 4:6] == pytest.approx(np.full((2, 2), z.max()))
    coarse = viz.heatmap_overlay_figure(images, heatmaps, joint=0, smooth=False).data[1]
    assert np.asarray(coarse.z).shape == (4, 4) and np.asarray(coarse.z).max() == 0.0  # joint 0 is empty
    assert (coarse.x0, coarse.dx, coarse.y0, coarse.dy) == (0.5, 2.0, 0.5, 2.0)  # centres at (i + 0.5) s - 0.5


def test_heatmap_overlay_figure_max_over_joints_and_one_joint():
    heatmaps = torch.zeros(1, 3, 8, 8)
    heatmaps[0, 0, 1, 1], heatmaps[0, 2, 6, 5] = 0.9, 0.4
    both = np.asarray(viz.heatmap_overlay_figure(_images(1), heatmaps).data[1].z)
    assert both[1, 1] == pytest.approx(0.9) and both[6, 5] == pytest.approx(0.4)
    last = np.asarray(viz.heatmap_overlay_figure(_images(1), heatmaps.numpy(), joint=2).data[1].z)
    assert last[1, 1] == 0.0 and last[6, 5] == pytest.approx(0.4)


@pytest.mark.parametrize("call, match", [
    (lambda: viz.image_grid_figure(torch.zeros(2, 8, 8, 3)), r"images: expected shape \(N, 3, \*, \*\)"),
    (lambda: viz.image_grid_figure(torch.full((1, 3, 4, 4), 2.0)), r"images: expected float values in \[0, 1\]"),
    (lambda: viz.image_grid_figure(_images(3), {"a": _keypoints(2)}, H36M17),
     r"keypoints\['a'\]: expected shape \(3, 17, 2\), got \(2, 17, 2\)"),
    (lambda: viz.image_grid_figure(_images(3), {"a": torch.zeros(3, 5, 2)}, H36M17), r"keypoints\['a'\]"),
    (lambda: viz.image_grid_figure(_images(3), {}), "keypoints: expected a non-empty dict"),
    (lambda: viz.image_grid_figure(_images(3), {"a": _keypoints(3)}, visible=torch.ones(3, 16, dtype=torch.bool)),
     r"visible: expected shape \(3, 17\)"),
    (lambda: viz.image_grid_figure(_images(3), {"a": _keypoints(3)}, visible={"b": torch.ones(3, 17)}),
     "visible: unknown label 'b'"),
    (lambda: viz.image_grid_figure(_images(3), visible=torch.ones(3, 17)), "visible: given without keypoints"),
    (lambda: viz.image_grid_figure(_images(3), titles=["x"]), r"titles: expected one title per image \(3\)"),
    (lambda: viz.image_grid_figure(_images(3), cols=0), "cols: expected an int >= 1"),
    (lambda: viz.image_grid_figure(_images(3), {"a": _keypoints(3)}, colours=["#000", "#111"]),
     r"colours: expected one colour per label \(1\)"),
    (lambda: viz.heatmap_overlay_figure(_images(3), torch.zeros(2, 17, 4, 4)),
     r"heatmaps: expected shape \(3, \*, \*, \*\), got \(2, 17, 4, 4\)"),
    (lambda: viz.heatmap_overlay_figure(_images(3), torch.zeros(3, 17, 4, 4), joint=17),
     r"joint: expected None or an int in \[0, 17\), got 17"),
    (lambda: viz.heatmap_overlay_figure(_images(3), torch.zeros(3, 17, 4, 4), joint=-1), "joint: expected"),
    (lambda: viz.heatmap_overlay_figure(_images(3), torch.zeros(3, 17, 4, 4), opacity=1.5), "opacity"),
])
def test_image_figures_reject_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_image_figures_reject_bad_dtypes():
    with pytest.raises(TypeError, match="images: expected uint8 or floats"):
        viz.image_grid_figure(torch.zeros(1, 3, 4, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="heatmaps: expected floating-point"):
        viz.heatmap_overlay_figure(_images(1), torch.zeros(1, 1, 4, 4, dtype=torch.int64))


def test_box_figure_one_box_per_sample_and_reference_line():
    fig = viz.box_figure({"nose": [0.1, -0.2, 0.3], "left_eye": np.array([[0.5], [0.4]])}, ylabel="cosine",
                         reference=0.0)
    assert [t.name for t in fig.data] == ["nose", "left_eye"]
    assert list(fig.data[1].y) == [0.5, 0.4]
    assert len(fig.layout.shapes) == 1 and fig.layout.shapes[0].y0 == 0.0
    with pytest.raises(ValueError, match="at least one"):
        viz.box_figure({}, ylabel="y")
    with pytest.raises(ValueError, match="nose"):
        viz.box_figure({"nose": []}, ylabel="y")


# ------------------------------------------------------------------------ meshes


def test_mesh_overlay_figure_one_row_per_image_and_a_column_per_overlay():
    images = _images(3)
    overlays = {"regression": _images(3).float() / 255, "after 5 TTO steps": _images(3), "ground truth": _images(3)}
    fig = viz.mesh_overlay_figure(images, overlays, titles=["a", "b", "c"], scale=3, title="meshes")
    assert [t.type for t in fig.data] == ["image"] * 12
    assert np.array_equal(fig.data[0].z, images[0].permute(1, 2, 0).numpy())  # row 0: the input, then overlays
    assert np.array_equal(fig.data[6].z, overlays["after 5 TTO steps"][1].permute(1, 2, 0).numpy())
    assert fig.data[5].xaxis == "x6" and fig.data[5].yaxis == "y6"  # row 1, column 1 is subplot 6
    texts = [a.text for a in fig.layout.annotations]
    assert texts == ["input", "regression", "after 5 TTO steps", "ground truth", "a", "b", "c"]
    assert [a.textangle for a in fig.layout.annotations[4:]] == [-90] * 3
    assert fig.layout.yaxis7.range == (7.5, -0.5) and fig.layout.yaxis7.scaleanchor == "x7"  # y down, square
    assert fig.layout.width > 4 * 8 * 3 and fig.layout.height > 3 * 8 * 3
    bare = viz.mesh_overlay_figure(images[:1], {"x": images[:1]})
    assert len(bare.data) == 2 and [a.text for a in bare.layout.annotations] == ["input", "x"]
    assert bare.layout.margin.l < fig.layout.margin.l  # room for row titles only when given


@pytest.mark.parametrize("call, match", [
    (lambda: viz.mesh_overlay_figure(_images(2), {}), "overlays: expected a non-empty dict"),
    (lambda: viz.mesh_overlay_figure(_images(2), [_images(2)]), "overlays: expected a non-empty dict"),
    (lambda: viz.mesh_overlay_figure(_images(2), {"a": _images(3)}),
     r"overlays\['a'\]: expected shape \(2, 3, 8, 8\), got \(3, 3, 8, 8\)"),
    (lambda: viz.mesh_overlay_figure(_images(2), {"a": _images(2, size=6)}), r"overlays\['a'\]: expected shape"),
    (lambda: viz.mesh_overlay_figure(_images(2), {"a": torch.full((2, 3, 8, 8), 1.5)}),
     r"overlays\['a'\]: expected float values in \[0, 1\]"),
    (lambda: viz.mesh_overlay_figure(_images(2), {"": _images(2)}), "overlays: labels must be non-empty strings"),
    (lambda: viz.mesh_overlay_figure(_images(2), {"a": _images(2)}, titles=["x"]), r"titles: expected one title"),
    (lambda: viz.mesh_overlay_figure(torch.zeros(2, 8, 8, 3), {"a": _images(2)}), r"images: expected shape"),
    (lambda: viz.mesh_overlay_figure(_images(2), {"a": _images(2)}, scale=0), "scale"),
])
def test_mesh_overlay_figure_rejects_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _grid_mesh(n=12, steps=3, seed=0):
    """A bumpy ``n x n`` grid surface 3 m in front of the camera, moving over ``steps`` steps:
    vertices ``(S, n n, 3)`` camera frame, faces ``(2 (n - 1)^2, 3)``."""
    u, v = np.meshgrid(np.linspace(-0.5, 0.5, n), np.linspace(-1.0, 1.0, n))
    bumps = 0.1 * np.random.default_rng(seed).standard_normal(u.shape)
    base = np.stack([u, v, 3.0 + bumps], axis=-1).reshape(-1, 3)
    shift = np.linspace(0.0, 0.3, steps)[:, None, None] * np.array([1.0, -0.5, 0.2])
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return base[None] + shift, faces


def test_mesh_steps_figure_has_a_frame_and_slider_step_per_step():
    verts, faces = _grid_mesh(steps=4)
    fig = viz.mesh_steps_figure({"TTO": torch.from_numpy(verts), "baseline": verts + 0.1}, torch.from_numpy(faces),
                                reference=verts[-1], reference_name="ground truth", step_labels=["0", "1", "2", "5"])
    assert [t.type for t in fig.data] == ["mesh3d"] * 3
    assert [t.name for t in fig.data] == ["TTO", "baseline", "ground truth"]
    assert all(t.showlegend for t in fig.data)
    assert fig.data[0].color != fig.data[1].color and fig.data[2].color == viz.REFERENCE_COLOUR
    assert fig.data[2].opacity == viz.REFERENCE_OPACITY and fig.data[0].opacity is None
    assert len(fig.data[0].i) == len(faces) and len(fig.data[0].x) == len(verts[0])
    assert len(fig.frames) == 4 and [f.name for f in fig.frames] == ["0", "1", "2", "3"]
    assert all(f.traces == (0, 1) and len(f.data) == 2 for f in fig.frames)  # the reference stays
    assert fig.frames[2].data[0].i is None  # frames carry positions only; faces stay in the traces
    slider = fig.layout.sliders[0]
    assert [s.label for s in slider.steps] == ["0", "1", "2", "5"] and slider.active == 0
    assert [list(s.args[0]) for s in slider.steps] == [["0"], ["1"], ["2"], ["3"]]
    # Frame 3 holds step 3 of the second label, drawn upright: plot (x, y, z) = camera (x, z, -y).
    np.testing.assert_allclose(fig.frames[3].data[1].z, -(verts[3] + 0.1)[:, 1], rtol=1e-6)
    np.testing.assert_allclose(fig.frames[3].data[1].y, (verts[3] + 0.1)[:, 2], rtol=1e-6)
    np.testing.assert_allclose(fig.data[0].x, verts[0][:, 0], rtol=1e-6)


def test_mesh_steps_figure_scene_is_equal_and_holds_every_step():
    verts, faces = _grid_mesh(steps=5)
    fig = viz.mesh_steps_figure(verts, faces)
    assert fig.data[0].name == "mesh" and len(fig.data) == 1
    scene = fig.layout.scene
    ranges = np.array([scene.xaxis.range, scene.yaxis.range, scene.zaxis.range])
    widths = ranges[:, 1] - ranges[:, 0]
    assert scene.aspectmode == "cube" and np.allclose(widths, widths[0])
    for frame in fig.frames:
        points = np.stack([frame.data[0].x, frame.data[0].y, frame.data[0].z], axis=1)
        assert (points >= ranges[:, 0]).all() and (points <= ranges[:, 1]).all()


def test_mesh_steps_figure_max_faces_simplifies_by_vertex_clustering():
    verts, faces = _grid_mesh(n=20, steps=3)
    full = viz.mesh_steps_figure(verts, faces, reference=verts[0])
    small = viz.mesh_steps_figure(verts, faces, reference=verts[0], max_faces=150)
    i, j, k = (np.asarray(getattr(small.data[0], c)) for c in "ijk")
    used = len(small.data[0].x)
    assert 75 <= len(i) <= 150 and used < len(verts[0]) / 2
    assert min(i.min(), j.min(), k.min()) >= 0 and max(i.max(), j.max(), k.max()) < used
    assert ((i != j) & (j != k) & (i != k)).all()
    assert all(len(f.data[0].x) == used for f in small.frames) and len(small.data[1].x) == used
    # Every drawn point is an exact vertex of its step's mesh (representatives, not averages).
    for s, frame in enumerate(small.frames):
        drawn = np.stack([frame.data[0].x, frame.data[0].y, frame.data[0].z], axis=1)
        mesh = viz._to_plot_axes(viz.camera_to_upright(verts[s])).astype(np.float32)
        assert (np.abs(drawn[:, None] - mesh[None]).max(-1).min(1) == 0).all()
    assert len(small.to_json()) < len(full.to_json()) / 2
    assert len(viz.mesh_steps_figure(verts, faces, max_faces=10_000).data[0].i) == len(faces)  # fits: all kept


@pytest.mark.parametrize("call, match", [
    (lambda v, f: viz.mesh_steps_figure(v[0], f), r"vertices: expected shape \(\*, \*, 3\)"),
    (lambda v, f: viz.mesh_steps_figure(v[:0], f), "vertices: expected at least one step"),
    (lambda v, f: viz.mesh_steps_figure({}, f), "vertices: expected an"),
    (lambda v, f: viz.mesh_steps_figure({"a": v, "b": v[:2]}, f), r"vertices: expected every entry to have the shape"),
    (lambda v, f: viz.mesh_steps_figure({"a": v[..., :2]}, f), r"vertices\['a'\]: expected shape"),
    (lambda v, f: viz.mesh_steps_figure({1: v}, f), "vertices: labels must be non-empty strings"),
    (lambda v, f: viz.mesh_steps_figure(v * np.nan, f), "vertices: expected finite values"),
    (lambda v, f: viz.mesh_steps_figure(v, f + 1), r"faces: vertex indices must lie in \[0, 143\]"),
    (lambda v, f: viz.mesh_steps_figure(v, f[:, :2]), r"faces: expected shape \(\*, 3\)"),
    (lambda v, f: viz.mesh_steps_figure(v, f[:0]), "faces: expected at least one face"),
    (lambda v, f: viz.mesh_steps_figure(v, f, reference=v), r"reference: expected shape \(144, 3\)"),
    (lambda v, f: viz.mesh_steps_figure(v, f, max_faces=0), "max_faces: expected an int >= 1 or None"),
    (lambda v, f: viz.mesh_steps_figure(v, f, max_faces=2.5), "max_faces: expected an int >= 1 or None"),
    (lambda v, f: viz.mesh_steps_figure(v, f, step_labels=["a"]), r"step_labels: expected one label per step \(3\)"),
])
def test_mesh_steps_figure_rejects_bad_input(call, match):
    verts, faces = _grid_mesh()
    with pytest.raises(ValueError, match=match):
        call(verts, faces)
    with pytest.raises(TypeError, match="faces: expected integer vertex indices"):
        viz.mesh_steps_figure(verts, faces.astype(float))
