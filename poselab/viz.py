"""Plotly figures for the book: skeletons in 3D (with a frame slider), camera rigs, 2D views.

Figures are plain ``plotly.graph_objects.Figure`` objects, so they render in Jupyter, on
Colab and, with plotly.js embedded, in the offline HTML book. World points use the mocap
world frame (metres, +Y up); plots show +Y as the vertical axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from poselab.checks import check_shape

SIDE_COLOURS = {"left": "#1f77b4", "right": "#d62728", "centre": "#444444"}


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _to_plot_axes(points: np.ndarray) -> np.ndarray:
    """World (x, y up, z) -> plot (x, -z, y): a proper rotation that puts +Y on plotly's up axis."""
    return np.stack([points[..., 0], -points[..., 2], points[..., 1]], axis=-1)


def _side(skeleton, joint: int) -> str:
    """``left``/``right`` from the skeleton's symmetric pairs, else ``centre``."""
    if any(joint == left for left, _ in skeleton.symmetric_joints):
        return "left"
    if any(joint == right for _, right in skeleton.symmetric_joints):
        return "right"
    return "centre"


def _limb_segments(points: np.ndarray, skeleton) -> dict[str, np.ndarray]:
    """Per body side, the limb segments of one pose (J, 3) as one polyline with NaN breaks."""
    limbs = np.array(skeleton.limbs)  # (L, 2) parent, child
    sides = np.array([_side(skeleton, child) for child in limbs[:, 1]])
    # (L, 3, 3): parent point, child point, NaN break
    segments = np.stack([points[limbs[:, 0]], points[limbs[:, 1]], np.full((len(limbs), 3), np.nan)], axis=1)
    return {side: segments[sides == side].reshape(-1, 3) for side in SIDE_COLOURS}


def _skeleton_traces(points: np.ndarray, skeleton, name: str = "", showlegend: bool = True) -> list[go.Scatter3d]:
    segments = _limb_segments(_to_plot_axes(points), skeleton)
    traces = []
    for side, seg in segments.items():
        traces.append(go.Scatter3d(
            x=seg[:, 0], y=seg[:, 1], z=seg[:, 2], mode="lines+markers",
            line=dict(color=SIDE_COLOURS[side], width=6), marker=dict(size=3, color=SIDE_COLOURS[side]),
            name=f"{name} {side}".strip(), showlegend=showlegend, connectgaps=False))
    return traces


def _equal_scene(points: np.ndarray, margin: float = 0.2) -> dict:
    """A 3D scene with equal metric axes that holds every point of ``points`` (..., 3) (plot axes)."""
    flat = points.reshape(-1, 3)
    flat = flat[np.isfinite(flat).all(axis=1)]
    lo, hi = flat.min(axis=0) - margin, flat.max(axis=0) + margin
    half = (hi - lo).max() / 2
    mid = (hi + lo) / 2
    axes = {k: dict(range=[mid[i] - half, mid[i] + half], title=t)
            for i, (k, t) in enumerate([("xaxis", "x (m)"), ("yaxis", "-z (m)"), ("zaxis", "y, up (m)")])}
    return dict(aspectmode="cube", **axes)


def skeleton_animation(joints, skeleton, fps: float = 30.0, stride: int = 1, title: str = "") -> go.Figure:
    """An interactive 3D skeleton with a play button and a frame slider.

    Args:
        joints: ``(T, J, 3)`` world positions in metres (+Y up).
        skeleton: a :class:`~poselab.data.skeleton.Skeleton` with ``J`` joints.
        fps: frame rate of ``joints`` (labels the slider in seconds).
        stride: show every ``stride``-th frame (keeps the page small).
    """
    joints = _np(joints)
    check_shape("joints", joints, (None, skeleton.num_joints, 3))
    if stride < 1:
        raise ValueError(f"stride: expected an int >= 1, got {stride!r}")
    frames_idx = np.arange(0, joints.shape[0], stride)
    fig = go.Figure(data=_skeleton_traces(joints[frames_idx[0]], skeleton))
    fig.frames = [go.Frame(data=_skeleton_traces(joints[i], skeleton), name=str(i)) for i in frames_idx]
    steps = [dict(method="animate", label=f"{i / fps:.1f}",
                  args=[[str(i)], dict(mode="immediate", frame=dict(duration=0, redraw=True))]) for i in frames_idx]
    play = dict(type="buttons", showactive=False, x=0.0, y=0.0, xanchor="left", yanchor="top",
                buttons=[dict(label="play", method="animate",
                              args=[None, dict(frame=dict(duration=1000 * stride / fps, redraw=True),
                                               fromcurrent=True)]),
                         dict(label="pause", method="animate",
                              args=[[None], dict(mode="immediate", frame=dict(duration=0, redraw=False))])])
    fig.update_layout(title=title, scene=_equal_scene(_to_plot_axes(joints[frames_idx])),
                      sliders=[dict(steps=steps, currentvalue=dict(prefix="t (s) = "), pad=dict(t=40))],
                      updatemenus=[play], height=560, margin=dict(l=0, r=0, t=40, b=0))
    return fig


def _frustum_lines(cameras, index: int, depth: float) -> np.ndarray:
    """Camera ``index`` as a pyramid: centre to the four image corners at ``depth`` metres (world)."""
    R, t = _np(cameras.R[index]), _np(cameras.t[index])
    f, c, (w, h) = _np(cameras.focal[index]), _np(cameras.center[index]), _np(cameras.size[index])
    corners_px = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=float)
    corners_cam = np.concatenate([(corners_px - c) / f * depth, np.full((4, 1), depth)], axis=1)
    centre = -R.T @ t
    corners = corners_cam @ R + centre  # x_world = R^T (x_cam - t)
    nan = np.full(3, np.nan)
    pts = []
    for k in range(4):
        pts += [centre, corners[k], nan]
    pts += [corners[0], corners[1], corners[2], corners[3], corners[0], nan]
    return np.array(pts)


def camera_rig_figure(cameras, pose, skeleton, depth: float = 0.6, title: str = "",
                      colour: str = "#2ca02c", extra: Sequence[tuple[object, str, str]] = ()) -> go.Figure:
    """Cameras as pyramids around a pose, in 3D.

    Args:
        cameras: a :class:`~poselab.data.cameras.Cameras` batch.
        pose: ``(J, 3)`` world positions in metres.
        depth: pyramid length in metres.
        extra: more ``(cameras, name, colour)`` rigs to draw in the same scene.
    """
    pose = _np(pose)
    check_shape("pose", pose, (skeleton.num_joints, 3))
    fig = go.Figure(data=_skeleton_traces(pose, skeleton, showlegend=False))
    every = [_to_plot_axes(pose)]
    for cams, name, col in [(cameras, "camera", colour), *extra]:
        lines = np.concatenate([_frustum_lines(cams, i, depth) for i in range(len(cams))])
        p = _to_plot_axes(lines)
        every.append(p)
        fig.add_trace(go.Scatter3d(x=p[:, 0], y=p[:, 1], z=p[:, 2], mode="lines", name=name,
                                   line=dict(color=col, width=3)))
    fig.update_layout(title=title, scene=_equal_scene(np.concatenate([e.reshape(-1, 3) for e in every])),
                      height=560, margin=dict(l=0, r=0, t=40, b=0))
    return fig


def projections_figure(keypoints, sizes, skeleton, titles: Sequence[str] | None = None, cols: int = 4) -> go.Figure:
    """2D keypoints in each camera's image, pixel axes (y down), image borders drawn.

    Args:
        keypoints: ``(C, J, 2)`` pixels.
        sizes: ``(C, 2)`` image (width, height) in pixels.
    """
    keypoints, sizes = _np(keypoints), _np(sizes)
    check_shape("keypoints", keypoints, ("C", skeleton.num_joints, 2))
    check_shape("sizes", sizes, (keypoints.shape[0], 2))
    n = keypoints.shape[0]
    cols = min(cols, n)
    rows = int(np.ceil(n / cols))
    titles = list(titles) if titles is not None else [f"camera {i}" for i in range(n)]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles)
    for i in range(n):
        r, c = i // cols + 1, i % cols + 1
        pts3 = np.concatenate([keypoints[i], np.zeros((skeleton.num_joints, 1))], axis=1)
        for side, seg in _limb_segments(pts3, skeleton).items():
            fig.add_trace(go.Scatter(x=seg[:, 0], y=seg[:, 1], mode="lines+markers", showlegend=False,
                                     line=dict(color=SIDE_COLOURS[side], width=3), marker=dict(size=4)), r, c)
        w, h = sizes[i]
        fig.add_trace(go.Scatter(x=[0, w, w, 0, 0], y=[0, 0, h, h, 0], mode="lines", showlegend=False,
                                 line=dict(color="#999", dash="dot")), r, c)
        fig.update_xaxes(range=[-0.05 * w, 1.05 * w], constrain="domain", row=r, col=c)
        fig.update_yaxes(range=[1.05 * h, -0.05 * h], scaleanchor=f"x{i + 1 if i else ''}", row=r, col=c)
    fig.update_layout(height=330 * rows, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def curves_figure(x, series: dict[str, Sequence[float]], xlabel: str, ylabel: str, title: str = "") -> go.Figure:
    """Line plot of several named series over a shared ``x`` (training curves, sweeps)."""
    fig = go.Figure()
    for name, ys in series.items():
        if len(ys) != len(x):
            raise ValueError(f"series {name!r}: expected {len(x)} values to match x, got {len(ys)}")
        fig.add_trace(go.Scatter(x=list(x), y=list(ys), mode="lines+markers", name=name))
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, height=380,
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig


def bars_figure(groups: dict[str, dict[str, float]], ylabel: str, title: str = "") -> go.Figure:
    """Grouped bars: ``groups[series][category] = value`` (e.g. metric per test split)."""
    fig = go.Figure()
    for name, values in groups.items():
        fig.add_trace(go.Bar(name=name, x=list(values), y=list(values.values()),
                             text=[f"{v:.1f}" for v in values.values()], textposition="outside"))
    fig.update_layout(barmode="group", title=title, yaxis_title=ylabel, height=380,
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig


def histogram_figure(samples: dict[str, Sequence[float]], xlabel: str, title: str = "", bins: int = 40) -> go.Figure:
    """Overlaid normalised histograms of several named samples (e.g. DAR per split)."""
    fig = go.Figure()
    for name, values in samples.items():
        fig.add_trace(go.Histogram(x=_np(values).ravel(), name=name, opacity=0.6, nbinsx=bins,
                                   histnorm="probability density"))
    fig.update_layout(barmode="overlay", title=title, xaxis_title=xlabel, yaxis_title="density", height=360,
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig
