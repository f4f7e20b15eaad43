"""Pose-estimation metrics: 3D joint errors, PCK/AUC, mesh error, 2D PCK, structural
consistency (LSE, BSLE, LLE) and heatmap response.

Conventions shared by every function here:

* **Array type.** Pass ``torch.Tensor`` *or* ``numpy.ndarray`` (all array arguments of one
  call of the same kind); the result has the same kind. The maths is written once in torch;
  NumPy inputs are wrapped at the boundary and the result converted back (a scalar result
  comes back as a NumPy scalar such as ``np.float64``). Torch results stay on the input's
  device and keep the autograd graph, so the errors can be used as losses.
* **Units.** Coordinates are in metres and errors come back in metres (the book multiplies
  by 1000 for millimetres). PCK thresholds are metres too. 2D functions work in whatever
  unit ``pred``, ``target`` and ``ref_size`` share (pixels, usually).
* **Shapes.** Poses are ``(..., J, D)``: any number of leading sample dimensions (``...``,
  typically ``(N,)``), ``J`` joints, ``D = 3`` (or 2 for :func:`pck2d`). Shapes are checked;
  empty or non-finite input raises ``ValueError``.
* **Numbers.** Wherever a number is taken (``threshold``, ``alpha``, a scalar ``ref_size``,
  ``root``, the entries of ``thresholds``), Python numbers, NumPy scalars (``np.float32(0.1)``,
  ``np.int64(2)``), 0-d arrays and 0-d tensors are accepted; booleans are refused. Arrays must
  have a numeric dtype: an object array is refused with an error naming the argument.
* **Reductions.** ``reduction="mean"`` gives one scalar over all samples and joints;
  ``"none"`` gives one value per sample, shape ``(...)``; ``"joint"`` (where offered) gives
  one value per joint, shape ``(J,)``, averaged over the samples. The structural metrics
  return one value per limb pair / segment, ``(..., P)``, for ``"none"`` (see there).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from poselab.checks import as_number, check_choice, check_positive_number, check_same_shape

__all__ = [
    "above_threshold_ratio",
    "auc3d",
    "bsle",
    "heatmap_response",
    "lle",
    "lse",
    "mpjpe",
    "n_mpjpe",
    "p_mpjpe",
    "pck2d",
    "pck3d",
    "procrustes_align",
    "pve",
    "scale_align",
]

Array = Any  # torch.Tensor | np.ndarray; kept loose so the signatures stay readable

AUC_THRESHOLDS = np.linspace(0.0, 0.150, 31)
"""Default :func:`auc3d` thresholds in metres: 0 to 150 mm in 5 mm steps (MPI-INF-3DHP)."""

_POINT_REDUCTIONS = ("mean", "none", "joint")
_STRUCT_REDUCTIONS = ("mean", "none")


# --------------------------------------------------------------------------------------
# Boundary: numpy/torch in, same kind out; validation.
# --------------------------------------------------------------------------------------


def _to_torch(arrays: dict[str, Array]) -> tuple[list[torch.Tensor], bool]:
    """Return the arrays as tensors and whether the caller passed NumPy arrays."""
    kinds = {}
    for name, a in arrays.items():
        if isinstance(a, torch.Tensor):
            kinds[name] = "torch"
        elif isinstance(a, np.ndarray):
            kinds[name] = "numpy"
        else:
            raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(a).__name__}")
    if len(set(kinds.values())) > 1:
        desc = ", ".join(f"{n} {k}" for n, k in kinds.items())
        raise TypeError(f"expected all arrays to be torch tensors or all numpy arrays, got {desc}")
    is_numpy = next(iter(kinds.values())) == "numpy"
    if not is_numpy:
        return list(arrays.values()), is_numpy
    tensors = []
    for name, a in arrays.items():
        if a.dtype.kind not in "biufc":
            raise TypeError(f"{name}: expected a numeric array (floating-point, or bool for masks), got a "
                            f"numpy.ndarray of dtype {a.dtype} (convert it with np.asarray(..., dtype=float))")
        try:
            tensors.append(torch.from_numpy(np.ascontiguousarray(a)))
        except TypeError as exc:  # a numeric dtype torch has no counterpart for
            raise TypeError(f"{name}: numpy dtype {a.dtype} is not supported; expected a floating-point array "
                            f"({exc})") from None
    return tensors, is_numpy


def _back(x: torch.Tensor, is_numpy: bool) -> Array:
    """Convert a result back to the caller's array kind (0-d NumPy -> NumPy scalar)."""
    if not is_numpy:
        return x
    out = x.detach().cpu().numpy()
    return out[()] if out.ndim == 0 else out


def _check_float(arg: str, x: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{arg}: expected a floating-point array, got dtype {x.dtype}")


def _check_finite_nonempty(arg: str, x: torch.Tensor) -> None:
    if x.numel() == 0:
        raise ValueError(f"{arg}: expected a non-empty array, got shape {tuple(x.shape)}")
    try:
        finite = bool(torch.isfinite(x).all())
    except RuntimeError:  # under torch.func.vmap values cannot be inspected; skip this one check
        return
    if not finite:
        raise ValueError(f"{arg}: contains NaN or infinite values")


def _check_points(arg: str, x: torch.Tensor, dim: int = 3, what: str = "J") -> None:
    """``x`` must be a finite, non-empty float array of shape ``(..., what, dim)``."""
    _check_float(arg, x)
    if x.ndim < 2 or x.shape[-1] != dim:
        raise ValueError(f"{arg}: expected shape (..., {what}, {dim}), got {tuple(x.shape)}")
    _check_finite_nonempty(arg, x)


def _pair(pred_name: str, target_name: str, pred: Array, target: Array, dim: int = 3,
          what: str = "J") -> tuple[torch.Tensor, torch.Tensor, bool]:
    (p, t), is_numpy = _to_torch({pred_name: pred, target_name: target})
    _check_points(pred_name, p, dim, what)
    _check_points(target_name, t, dim, what)
    check_same_shape(**{pred_name: p, target_name: t})
    if p.dtype != t.dtype:
        raise TypeError(f"expected {pred_name} and {target_name} of equal dtype, got {p.dtype} and {t.dtype}")
    return p, t, is_numpy


def _reduce_joints(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce per-joint values ``(..., J)`` by ``"mean"``, ``"none"`` or ``"joint"``."""
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values.mean(dim=-1)
    return values.reshape(-1, values.shape[-1]).mean(dim=0)


# --------------------------------------------------------------------------------------
# Joint position errors.
# --------------------------------------------------------------------------------------


def _distances(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(pred - target, dim=-1)


def mpjpe(pred: Array, target: Array, reduction: str = "mean") -> Array:
    """Mean per-joint position error: mean Euclidean distance, no alignment.

    Args:
        pred, target: ``(..., J, 3)`` metres, in the same frame (for the usual protocol #1,
            both root-relative: root joint at the origin).
        reduction: ``"mean"`` -> scalar; ``"none"`` -> ``(...)`` per sample;
            ``"joint"`` -> ``(J,)`` per joint, averaged over samples.

    Returns:
        Error in metres.
    """
    check_choice("reduction", reduction, _POINT_REDUCTIONS)
    p, t, is_numpy = _pair("pred", "target", pred, target)
    return _back(_reduce_joints(_distances(p, t), reduction), is_numpy)


def pve(pred_vertices: Array, target_vertices: Array, reduction: str = "mean") -> Array:
    """Per-vertex error of meshes: mean Euclidean distance over vertices, no alignment.

    Align the meshes beforehand if the protocol asks for it (3DPW-style PVE is computed on
    pelvis-aligned meshes).

    Args:
        pred_vertices, target_vertices: ``(..., V, 3)`` metres.
        reduction: ``"mean"`` -> scalar; ``"none"`` -> ``(...)`` per mesh;
            ``"joint"`` -> ``(V,)`` per vertex, averaged over meshes.

    Returns:
        Error in metres.
    """
    check_choice("reduction", reduction, _POINT_REDUCTIONS)
    p, t, is_numpy = _pair("pred_vertices", "target_vertices", pred_vertices, target_vertices, what="V")
    return _back(_reduce_joints(_distances(p, t), reduction), is_numpy)


class _SpecialProcrustes(torch.autograd.Function):
    """``R = argmax_{R in SO(3)} tr(C^T R)`` for ``C (..., 3, 3)``, with a stable backward.

    Forward: SVD ``C = U S V^T``, ``R = U D V^T`` with ``D = diag(1, 1, det(U V^T))``, so R is
    a proper rotation even when the best orthogonal matrix would be a reflection.

    Backward: autograd through ``torch.linalg.svd`` divides by ``s_i^2 - s_j^2`` and returns
    NaN when singular values coincide (collinear or symmetric poses), although R itself
    only depends on ``s_i + s_j``. Differentiating ``R^T C = V (D S) V^T`` (symmetric)
    gives ``R^T dR = Omega`` skew with ``Omega' = V^T Omega V``,
    ``Omega'_ij = A'_ij / (l_i + l_j)``, ``A' = V^T (R^T dC - dC^T R) V``, ``l = D S``.
    ``l_i + l_j >= 0`` for sorted singular values; where it is (near) zero the rotation is
    undetermined in that plane and the denominator is clamped, so the gradient stays finite.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        u, s, vh = torch.linalg.svd(c)
        d = torch.where(torch.linalg.det(u @ vh) < 0, -1.0, 1.0).to(c.dtype)
        signs = torch.cat([torch.ones_like(s[..., :2]), d.unsqueeze(-1)], dim=-1)  # diag(D)
        r = (u * signs.unsqueeze(-2)) @ vh
        return r, vh, s * signs

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        r, vh, lam = output
        ctx.save_for_backward(r, vh, lam)
        ctx.mark_non_differentiable(vh, lam)

    @staticmethod
    def backward(ctx: Any, grad_r: torch.Tensor, _gv: Any, _gl: Any) -> torch.Tensor:
        r, vh, lam = ctx.saved_tensors
        k = vh @ (r.transpose(-1, -2) @ grad_r) @ vh.transpose(-1, -2)
        k = 0.5 * (k - k.transpose(-1, -2))  # only the skew part moves R
        denom = lam.unsqueeze(-1) + lam.unsqueeze(-2)
        eps = torch.finfo(lam.dtype).eps * lam[..., :1].abs().clamp_min(torch.finfo(lam.dtype).tiny)
        h = k / denom.clamp_min(eps.unsqueeze(-1))
        q = vh.transpose(-1, -2) @ h @ vh
        return 2.0 * (r @ q)


def _procrustes(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Similarity-align ``p`` onto ``t`` per sample (batched, no loop over samples)."""
    mu_p = p.mean(dim=-2, keepdim=True)
    mu_t = t.mean(dim=-2, keepdim=True)
    p0, t0 = p - mu_p, t - mu_t
    c = t0.transpose(-1, -2) @ p0  # (..., 3, 3) = sum_j t_j p_j^T
    r, _, _ = _SpecialProcrustes.apply(c)
    # Optimal scale tr(C^T R) / |p0|^2; clamp keeps a collapsed prediction finite.
    tiny = torch.finfo(p.dtype).tiny
    scale = (c * r).sum(dim=(-1, -2)) / (p0 * p0).sum(dim=(-1, -2)).clamp_min(tiny)
    return scale[..., None, None] * (p0 @ r.transpose(-1, -2)) + mu_t


def procrustes_align(pred: Array, target: Array) -> Array:
    """Similarity-align each predicted pose onto its target (the P-MPJPE alignment).

    Per sample, finds the rotation ``R`` (a proper rotation, ``det R = +1``: reflections are
    excluded), uniform scale ``s`` and translation ``t`` minimising
    ``sum_j |s R pred_j + t - target_j|^2`` (Umeyama/Kabsch via one batched SVD), and returns
    ``s R pred_j + t``.

    Args:
        pred, target: ``(..., J, 3)`` metres.

    Returns:
        ``(..., J, 3)`` aligned prediction, metres. Differentiable with respect to ``pred``
        and ``target`` with finite gradients also for degenerate (e.g. collinear) poses.
    """
    p, t, is_numpy = _pair("pred", "target", pred, target)
    return _back(_procrustes(p, t), is_numpy)


def p_mpjpe(pred: Array, target: Array, reduction: str = "mean") -> Array:
    """Procrustes-aligned MPJPE (P-MPJPE, PA-MPJPE, protocol #2).

    MPJPE after :func:`procrustes_align` (rotation + uniform scale + translation fitted by
    least squares per sample; reflection-safe). Note that the alignment minimises the
    *squared* error, so the root-mean-square error is guaranteed to be no larger than after
    any other similarity alignment, while the reported mean distance is not (it almost
    always is in practice).

    Args:
        pred, target: ``(..., J, 3)`` metres.
        reduction: ``"mean"``, ``"none"`` (``(...)``) or ``"joint"`` (``(J,)``).

    Returns:
        Error in metres.
    """
    check_choice("reduction", reduction, _POINT_REDUCTIONS)
    p, t, is_numpy = _pair("pred", "target", pred, target)
    return _back(_reduce_joints(_distances(_procrustes(p, t), t), reduction), is_numpy)


def _check_root(root: Any, num_joints: int) -> int | None:
    """``root`` as a Python int (NumPy/torch integer scalars accepted), or ``None``."""
    if root is None:
        return None
    try:
        index = as_number("root", root)
    except TypeError:
        index = None
    if not isinstance(index, int) or not 0 <= index < num_joints:
        raise ValueError(f"root: expected None or a joint index in [0, {num_joints}), got {root!r}")
    return index


def _scale_align(p: torch.Tensor, t: torch.Tensor, root: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(s * p_c, t_c)``: both root-centred (if ``root``), ``p`` scaled by least squares."""
    if root is not None:
        p = p - p[..., root : root + 1, :]
        t = t - t[..., root : root + 1, :]
    tiny = torch.finfo(p.dtype).tiny
    scale = (p * t).sum(dim=(-1, -2)) / (p * p).sum(dim=(-1, -2)).clamp_min(tiny)
    return scale[..., None, None] * p, t


def scale_align(pred: Array, target: Array, root: int | None = 0) -> Array:
    """Scale each predicted pose about its root to best match the target (N-MPJPE alignment).

    With ``root = r``: ``p' = p - p_r`` and ``t' = t - t_r``; ``s = <p', t'> / <p', p'>``
    (sums over joints and coordinates, the least-squares scale); returns ``s p' + t_r``,
    i.e. the prediction placed on the target's root. With ``root=None`` nothing is centred:
    ``s`` is fitted about the coordinate origin and ``s p`` returned (the VideoPose3D code,
    which is applied to root-relative poses, for which both choices agree).

    Args:
        pred, target: ``(..., J, 3)`` metres.
        root: root joint index, or ``None``.

    Returns:
        ``(..., J, 3)`` metres.
    """
    p, t, is_numpy = _pair("pred", "target", pred, target)
    root = _check_root(root, p.shape[-2])
    aligned, _ = _scale_align(p, t, root)
    if root is not None:
        aligned = aligned + t[..., root : root + 1, :]
    return _back(aligned, is_numpy)


def n_mpjpe(pred: Array, target: Array, reduction: str = "mean", root: int | None = 0) -> Array:
    """Scale-normalised MPJPE (N-MPJPE, VideoPose3D): MPJPE after :func:`scale_align`.

    Exactly what is aligned: both poses are translated so that joint ``root`` sits at the
    origin (skipped for ``root=None``), then the prediction is multiplied by the one scalar
    ``s = <p, t> / <p, p>`` that minimises the squared error; no rotation. The root joint's
    error is then 0 and still counts in the mean over ``J`` joints, as in VideoPose3D.

    Args:
        pred, target: ``(..., J, 3)`` metres.
        reduction: ``"mean"``, ``"none"`` (``(...)``) or ``"joint"`` (``(J,)``).
        root: root joint index (default 0, the pelvis of H36M17 and CMU31), or ``None``.

    Returns:
        Error in metres.
    """
    check_choice("reduction", reduction, _POINT_REDUCTIONS)
    p, t, is_numpy = _pair("pred", "target", pred, target)
    root = _check_root(root, p.shape[-2])
    aligned, t_c = _scale_align(p, t, root)
    return _back(_reduce_joints(_distances(aligned, t_c), reduction), is_numpy)


# --------------------------------------------------------------------------------------
# PCK / AUC.
# --------------------------------------------------------------------------------------


def pck3d(pred: Array, target: Array, threshold: float = 0.150, reduction: str = "mean") -> Array:
    """3D PCK (MPI-INF-3DHP protocol): fraction of joints with error ``< threshold``.

    No alignment is done; the protocol compares root-relative poses. A joint counts as
    correct when its Euclidean error is strictly below ``threshold``.

    Args:
        pred, target: ``(..., J, 3)`` metres.
        threshold: metres (default 0.150 = 150 mm).
        reduction: ``"mean"`` -> scalar fraction; ``"none"`` -> ``(...)`` per sample;
            ``"joint"`` -> ``(J,)`` per joint over samples.

    Returns:
        Fraction in [0, 1] (not percent). Not differentiable (a count).
    """
    check_choice("reduction", reduction, _POINT_REDUCTIONS)
    threshold = check_positive_number("threshold", threshold)
    p, t, is_numpy = _pair("pred", "target", pred, target)
    correct = (_distances(p, t) < threshold).to(p.dtype)
    return _back(_reduce_joints(correct, reduction), is_numpy)


def _thresholds(thresholds: Any, like: torch.Tensor) -> torch.Tensor:
    if thresholds is None:
        thresholds = AUC_THRESHOLDS
    if isinstance(thresholds, torch.Tensor):
        if thresholds.dtype == torch.bool or thresholds.is_complex():
            raise TypeError(f"thresholds: expected a numeric (integer or floating-point) array, got dtype "
                            f"{thresholds.dtype}")
        thr = thresholds.detach().to(device=like.device, dtype=like.dtype)
    else:
        if isinstance(thresholds, np.ndarray) and thresholds.dtype.kind not in "iuf":
            raise TypeError(f"thresholds: expected a numeric (integer or floating-point) array, got a "
                            f"numpy.ndarray of dtype {thresholds.dtype}")
        if isinstance(thresholds, (list, tuple)):  # entries may be NumPy/torch scalars; no booleans
            values = []
            for i, v in enumerate(thresholds):
                try:
                    values.append(as_number(f"thresholds[{i}]", v))
                except TypeError as exc:
                    raise ValueError(f"thresholds: expected a 1-D sequence of numbers; {exc}") from None
            thresholds = values
        try:
            thr = torch.as_tensor(np.asarray(thresholds, dtype=np.float64), dtype=like.dtype, device=like.device)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"thresholds: expected a 1-D sequence of numbers, got {thresholds!r}") from exc
    if thr.ndim != 1 or thr.numel() == 0:
        raise ValueError(f"thresholds: expected a non-empty 1-D sequence, got shape {tuple(thr.shape)}")
    if not bool(torch.isfinite(thr).all()) or bool((thr < 0).any()):
        raise ValueError(f"thresholds: expected finite values >= 0, got {thr.tolist()}")
    return thr


def auc3d(pred: Array, target: Array, thresholds: Any = None, reduction: str = "mean") -> Array:
    """Area under the 3D PCK curve (MPI-INF-3DHP protocol): mean of :func:`pck3d` over thresholds.

    Args:
        pred, target: ``(..., J, 3)`` metres.
        thresholds: 1-D thresholds in metres; default :data:`AUC_THRESHOLDS`
            (``np.linspace(0, 0.150, 31)``: 0-150 mm in 5 mm steps).
        reduction: ``"mean"``, ``"none"`` (``(...)``) or ``"joint"`` (``(J,)``).

    Returns:
        Normalised area in [0, 1] (the mean PCK over the thresholds).
    """
    check_choice("reduction", reduction, _POINT_REDUCTIONS)
    p, t, is_numpy = _pair("pred", "target", pred, target)
    thr = _thresholds(thresholds, p)
    correct = (_distances(p, t).unsqueeze(-1) < thr).to(p.dtype).mean(dim=-1)  # (..., J)
    return _back(_reduce_joints(correct, reduction), is_numpy)


def pck2d(pred: Array, target: Array, alpha: float, ref_size: Array | float, visible: Array | None = None,
          reduction: str = "mean") -> Array:
    """2D PCK: fraction of visible joints within ``alpha * ref_size`` of the target.

    A joint is correct when ``|pred - target| < alpha * ref_size`` (strict, as in MMPose),
    with one reference size per sample (bounding-box size, torso or head size, ...). Only
    joints with ``visible`` True are counted.

    Args:
        pred, target: ``(..., J, 2)``, e.g. pixels.
        alpha: fraction of the reference size, > 0 (e.g. 0.05, 0.2).
        ref_size: ``(...)`` per-sample reference sizes (> 0, same unit as the points), or one
            number for all samples (a Python/NumPy scalar or a 0-d array/tensor).
        visible: optional ``(...,  J)`` bool mask; default all visible.
        reduction: ``"mean"`` -> correct / visible over everything; ``"none"`` -> ``(...)``
            per sample; ``"joint"`` -> ``(J,)`` per joint over samples. A group with no
            visible joint gives NaN.

    Returns:
        Fraction in [0, 1].
    """
    check_choice("reduction", reduction, _POINT_REDUCTIONS)
    alpha = check_positive_number("alpha", alpha)
    arrays = {"pred": pred, "target": target}
    scalar_ref = isinstance(ref_size, (int, float, np.generic)) or (
        isinstance(ref_size, (np.ndarray, torch.Tensor)) and ref_size.ndim == 0)
    if scalar_ref:  # one number for all samples (booleans refused)
        ref_size = check_positive_number("ref_size", ref_size)
    else:
        arrays["ref_size"] = ref_size
    if visible is not None:
        arrays["visible"] = visible
    tensors, is_numpy = _to_torch(arrays)  # one kind for all array arguments
    p, t, _ = _pair("pred", "target", tensors[0], tensors[1], dim=2)
    lead = tuple(p.shape[:-2])
    if scalar_ref:
        ref = torch.full(lead, float(ref_size), dtype=p.dtype, device=p.device)
    else:
        ref = tensors[2]
        _check_float("ref_size", ref)
        if tuple(ref.shape) != lead:
            raise ValueError(f"ref_size: expected shape {lead} (one size per sample of pred {tuple(p.shape)}), "
                             f"got {tuple(ref.shape)}")
        if not bool(torch.isfinite(ref).all()) or bool((ref <= 0).any()):
            raise ValueError("ref_size: expected finite values > 0")
        ref = ref.to(device=p.device, dtype=p.dtype)
    if visible is None:
        vis = torch.ones(p.shape[:-1], dtype=torch.bool, device=p.device)
    else:
        vis = tensors[-1]
        if vis.dtype != torch.bool:
            raise TypeError(f"visible: expected a bool array, got dtype {vis.dtype}")
        if tuple(vis.shape) != tuple(p.shape[:-1]):
            raise ValueError(f"visible: expected shape {tuple(p.shape[:-1])} (pred without its last dim), "
                             f"got {tuple(vis.shape)}")
        vis = vis.to(p.device)
    correct = (_distances(p, t) < alpha * ref.unsqueeze(-1)) & vis
    c, v = correct.to(p.dtype), vis.to(p.dtype)
    if reduction == "mean":
        out = c.sum() / v.sum()
    elif reduction == "none":
        out = c.sum(dim=-1) / v.sum(dim=-1)
    else:
        j = p.shape[-2]
        out = c.reshape(-1, j).sum(dim=0) / v.reshape(-1, j).sum(dim=0)
    return _back(out, is_numpy)


# --------------------------------------------------------------------------------------
# Structural consistency (SEAL-Pose): LSE, BSLE, LLE.
# --------------------------------------------------------------------------------------


def _default_skeleton() -> Any:
    from poselab.data.skeleton import H36M17  # lazy: the metrics do not need the data package

    return H36M17


def _index_array(arg: str, value: Any, tail: tuple[int, ...], num_joints: int, device: torch.device) -> torch.Tensor:
    """Validate joint-index pairs and return them as an int64 tensor of shape ``(P, *tail)``."""
    try:
        idx = np.asarray(value)
    except (TypeError, ValueError):
        idx = None
    want = "(parent, child) pairs" if tail == (2,) else "((left_parent, left_child), (right_parent, right_child)) pairs"
    if idx is not None and idx.size > 0 and not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{arg}: expected {want} of integer joint indices (a numeric integer array), got dtype "
                         f"{idx.dtype}: {value!r}")
    if idx is None or idx.ndim != 1 + len(tail) or tuple(idx.shape[1:]) != tail or idx.shape[0] == 0 \
            or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{arg}: expected a non-empty sequence of {want} of joint indices, got {value!r}")
    if idx.min() < 0 or idx.max() >= num_joints:
        raise ValueError(f"{arg}: joint indices must lie in [0, {num_joints}) for poses with {num_joints} joints, "
                         f"got indices from {idx.min()} to {idx.max()} (pass the limbs of the skeleton the poses use)")
    return torch.as_tensor(idx, dtype=torch.long, device=device)


def _check_skeleton_joints(arg: str, x: torch.Tensor, source: Any, what: str, default: bool) -> None:
    """If the limbs come from a skeleton object, ``x`` must have that skeleton's joint count."""
    expected = getattr(source, "num_joints", None)
    if expected is None or x.shape[-2] == expected:
        return
    name = getattr(source, "name", type(source).__name__)
    origin = f"the default skeleton {name!r}" if default else f"skeleton {name!r}"
    raise ValueError(
        f"{arg}: expected {expected} joints, the joint count of {origin} whose {what} are used, got {x.shape[-2]} "
        f"joints (shape {tuple(x.shape)}); pass poses in that layout, or the {what} of the skeleton the poses use"
    )


def _segment_lengths(x: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Lengths ``(..., P)`` of segments ``(P, 2)`` (joint a, joint b) of poses ``(..., J, 3)``."""
    return torch.linalg.vector_norm(x[..., segments[:, 1], :] - x[..., segments[:, 0], :], dim=-1)


def _resolve_symmetric(symmetric_limbs: Any) -> Any:
    if symmetric_limbs is None:
        return _default_skeleton().symmetric_limbs
    return getattr(symmetric_limbs, "symmetric_limbs", symmetric_limbs)


def _reduce_struct(values: torch.Tensor, reduction: str) -> torch.Tensor:
    return values.mean() if reduction == "mean" else values


def lse(pose: Array, symmetric_limbs: Any = None, reduction: str = "mean") -> Array:
    """Limb Symmetry Error (SEAL-Pose, Sec. 4.1) of one set of poses (no target needed).

    For each left/right limb pair ``i`` with lengths ``a = |l_i1 - l_i2|`` and
    ``b = |r_i1 - r_i2|``: ``LSE_i = |a - b| / (a + b)``. It is relative (unitless, in
    [0, 1]); the paper drops the factor 1/2 that would make the denominator the mean
    length, and so do we. A pair whose two limbs both have length 0 scores 0.

    Args:
        pose: ``(..., J, 3)``; any unit (the ratio is scale-free).
        symmetric_limbs: ``((lp, lc), (rp, rc))`` pairs of joint indices, or an object with a
            ``.symmetric_limbs`` attribute (a ``poselab.data.skeleton.Skeleton``); default
            ``H36M17``. With a skeleton (or the default) ``pose`` must have its ``J``
            (``ValueError`` naming both counts); with bare pairs every index must be ``< J``.
        reduction: ``"mean"`` -> scalar over samples and pairs; ``"none"`` -> ``(..., P)``,
            one value per sample and limb pair (feed to :func:`above_threshold_ratio`).

    Returns:
        Unitless ratio.
    """
    check_choice("reduction", reduction, _STRUCT_REDUCTIONS)
    (x,), is_numpy = _to_torch({"pose": pose})
    _check_points("pose", x)
    source = _default_skeleton() if symmetric_limbs is None else symmetric_limbs
    _check_skeleton_joints("pose", x, source, "symmetric limbs", symmetric_limbs is None)
    pairs = _index_array("symmetric_limbs", _resolve_symmetric(symmetric_limbs), (2, 2), x.shape[-2], x.device)
    left = _segment_lengths(x, pairs[:, 0])
    right = _segment_lengths(x, pairs[:, 1])
    total = left + right
    zero = total == 0
    value = (left - right).abs() / torch.where(zero, torch.ones_like(total), total)
    value = torch.where(zero, torch.zeros_like(value), value)
    return _back(_reduce_struct(value, reduction), is_numpy)


def _relative_length_error(pred: Array, target: Array, segments: Any, arg: str, reduction: str,
                           source: Any = None, what: str = "", default: bool = False) -> Array:
    p, t, is_numpy = _pair("pred", "target", pred, target)
    _check_skeleton_joints("pred", p, source, what, default)
    seg = _index_array(arg, segments, (2,), p.shape[-2], p.device)
    lp, lt = _segment_lengths(p, seg), _segment_lengths(t, seg)
    if bool((lt == 0).any()):
        raise ValueError(f"target: some segments given by {arg} have length 0; the relative error is undefined")
    value = (lp - lt).abs() / lt
    return _back(_reduce_struct(value, reduction), is_numpy)


def bsle(pred: Array, target: Array, limbs: Any = None, reduction: str = "mean") -> Array:
    """Body Segment Length Error (SEAL-Pose, Sec. 4.2).

    For each body segment ``i`` (a pair of adjacent joints) with predicted length
    ``|k_i2 - k_i1|`` and target length ``|t_i2 - t_i1|``:
    ``BSLE_i = | |k_i2 - k_i1| - |t_i2 - t_i1| | / |t_i2 - t_i1|`` (relative, unitless).
    The segments are all bones of the skeleton, i.e. every ``(parent, child)`` pair.

    Args:
        pred, target: ``(..., J, 3)``; target segments must have non-zero length.
        limbs: ``(parent, child)`` pairs, or an object with a ``.limbs`` attribute (a
            ``Skeleton``, whose ``.limbs`` are all its bones); default ``H36M17``. With a
            skeleton (or the default) the poses must have its ``J`` (``ValueError`` naming both
            counts); with bare pairs every index must be ``< J``.
        reduction: ``"mean"`` -> scalar; ``"none"`` -> ``(..., L)`` per sample and segment.

    Returns:
        Unitless ratio.
    """
    check_choice("reduction", reduction, _STRUCT_REDUCTIONS)
    source = _default_skeleton() if limbs is None else limbs
    return _relative_length_error(pred, target, getattr(source, "limbs", source), "limbs", reduction,
                                  source, "limbs", limbs is None)


def lle(pred: Array, target: Array, symmetric_limbs: Any = None, reduction: str = "mean") -> Array:
    """Limb Length Error (SEAL-Pose, Sec. 4.2): :func:`bsle` restricted to the limbs.

    The paper calls LLE "a specific case of BSLE focusing only on limb segments"; we read
    "limb" as in its LSE, the segments that have a left/right counterpart. The segments are
    therefore those of ``symmetric_limbs``, ordered ``left_0, right_0, left_1, right_1, ...``.

    Args:
        pred, target: ``(..., J, 3)``; target segments must have non-zero length.
        symmetric_limbs: ``((lp, lc), (rp, rc))`` pairs, or an object with a
            ``.symmetric_limbs`` attribute; default ``H36M17``. With a skeleton (or the
            default) the poses must have its ``J``; with bare pairs every index must be ``< J``.
        reduction: ``"mean"`` -> scalar; ``"none"`` -> ``(..., 2P)`` per sample and segment.

    Returns:
        Unitless ratio.
    """
    check_choice("reduction", reduction, _STRUCT_REDUCTIONS)
    pairs = _resolve_symmetric(symmetric_limbs)
    try:
        arr = np.asarray(pairs)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 3 or arr.shape[1:] != (2, 2):
        raise ValueError("symmetric_limbs: expected a non-empty sequence of ((left_parent, left_child), "
                         f"(right_parent, right_child)) pairs of joint indices, got {pairs!r}")
    source = _default_skeleton() if symmetric_limbs is None else symmetric_limbs
    return _relative_length_error(pred, target, arr.reshape(-1, 2), "symmetric_limbs", reduction,
                                  source, "symmetric limbs", symmetric_limbs is None)


def above_threshold_ratio(values: Array, threshold: float, reduction: str = "mean") -> Array:
    """Fraction of structural-error values strictly above ``threshold`` (SEAL-Pose Tables 3-4).

    The paper reports "the proportion of keypoints with errors above the defined
    threshold across the entire validation set" at thresholds 0.1 and 0.2. The values are
    the relative errors of :func:`lse`, :func:`bsle` or :func:`lle` (``reduction="none"``),
    one per sample and limb pair / segment (each segment ends in one keypoint, hence
    "keypoint" ratio); the ratio is pooled over all of them.

    Args:
        values: ``(..., P)`` per-sample, per-limb values.
        threshold: e.g. 0.1 or 0.2 (>= 0).
        reduction: ``"mean"`` -> one pooled fraction; ``"none"`` -> ``(P,)``, the fraction
            for each limb pair / segment over all samples.

    Returns:
        Fraction in [0, 1] (the paper prints percentages).
    """
    check_choice("reduction", reduction, _STRUCT_REDUCTIONS)
    threshold = check_positive_number("threshold", threshold, allow_zero=True)
    (v,), is_numpy = _to_torch({"values": values})
    _check_float("values", v)
    if v.ndim < 1:
        raise ValueError(f"values: expected shape (..., P), got {tuple(v.shape)}")
    _check_finite_nonempty("values", v)
    above = (v > threshold).to(v.dtype)
    out = above.mean() if reduction == "mean" else above.reshape(-1, v.shape[-1]).mean(dim=0)
    return _back(out, is_numpy)


# --------------------------------------------------------------------------------------
# Heatmaps.
# --------------------------------------------------------------------------------------


def heatmap_response(heatmaps: Array, reduction: str = "mean") -> Array:
    """Heatmap response: the mean over joints of each heatmap's maximum value.

    The collapse diagnostic of semi-supervised heatmap training: it decays towards 0 when
    consistency training collapses.

    Args:
        heatmaps: ``(B, K, H, W)`` (any leading dims ``(..., K, H, W)``).
        reduction: ``"mean"`` -> scalar over images; ``"none"`` -> ``(B,)`` per image;
            ``"joint"`` -> ``(K,)`` per joint, averaged over images.

    Returns:
        Same unit as the heatmaps.
    """
    check_choice("reduction", reduction, _POINT_REDUCTIONS)
    (h,), is_numpy = _to_torch({"heatmaps": heatmaps})
    _check_float("heatmaps", h)
    if h.ndim < 3:
        raise ValueError(f"heatmaps: expected shape (B, K, H, W), got {tuple(h.shape)}")
    _check_finite_nonempty("heatmaps", h)
    peaks = h.amax(dim=(-2, -1))  # (..., K)
    return _back(_reduce_joints(peaks, reduction), is_numpy)
