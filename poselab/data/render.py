"""Batched, depth-correct triangle rasteriser with smooth Lambertian shading, in pure torch.

Frames and units
----------------
* **Camera frame** = OpenCV: x to the right of the image, y down, z forward, metres. Every
  function here takes vertices already in the camera frame.
* **Pixels**: ``u = fx * x / z + cx``, ``v = fy * y / z + cy``; pixel ``(0, 0)`` is the *centre* of
  the top-left pixel, so an image of width ``W`` spans ``u`` in ``[-0.5, W - 0.5]``.
* **Images** are ``(B, 3, H, W)`` floats in ``[0, 1]``, masks ``(B, H, W)`` bool, depths
  ``(B, H, W)`` metres along the optical axis (camera z).

Rasterisation rules
-------------------
* A pixel is covered by a triangle when its **centre** lies inside the projected triangle (no
  sampling, no conservative coverage). A centre exactly on an edge goes to the triangle on the
  side of the edge towards ``+u`` (towards ``+v`` for a horizontal edge), i.e. to the triangle
  that contains the centre nudged by ``(+d, +d^2)``: the classic "top-left" rule. Two triangles
  that share an edge never both cover, and never both miss, a centre on that edge, and a centre
  on a shared vertex goes to exactly one face of the fan. Each edge function is evaluated from
  the edge's endpoint that comes first in (u, v) order, so both faces that share an edge compute
  bitwise opposite values (watertight in floating point, also for duplicated vertices).
* **Depth test**: the nearest face wins (smallest camera z at the pixel centre); equal depths (in
  float32) go to the lower face index. One ``scatter_reduce("amin")`` over an int64 key packing
  the float32 depth bits and the face number does it, so the result does not depend on the
  order of evaluation (deterministic on CPU and GPU).
* Faces with a vertex at ``z <= near`` are ignored (no clipping); with ``cull_backfaces`` faces
  whose normal ``(v1 - v0) x (v2 - v0)`` points away from the camera are ignored too
  (counter-clockwise winding seen from outside).
* Barycentric coordinates are perspective-correct (interpolating ``1/z`` in screen space), so
  ``sum_i bary_i * attribute_i`` is the attribute at the 3D point seen through the pixel centre.

Work is vectorised per face: faces are bucketed by the size of their box of pixel centres
(``2^i x 2^j``), and each bucket tests all its candidate centres in one broadcast, in chunks of
bounded size, so that the many one-pixel faces of a body mesh in a small crop cost little and
large faces still work. Everything follows the vertices' device and dtype; a loop runs only
over buckets.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf

from poselab.checks import check_int, check_positive, check_shape, check_size_pair

__all__ = [
    "Fragments",
    "Rendering",
    "rasterize",
    "interpolate",
    "vertex_normals",
    "shade",
    "render_mesh",
    "overlay_mesh",
    "OVERLAY_COLOUR",
    "OVERLAY_LIGHT_DIR",
    "OVERLAY_AMBIENT",
    "OVERLAY_DIFFUSE",
    "scale_intrinsics",
    "point_visibility",
]

_KEY_NONE = torch.iinfo(torch.int64).max
_LOW32 = 0xFFFFFFFF
_CHUNK = 1 << 22  # candidate (face, pixel centre) pairs per broadcast: bounds the rasteriser's memory


@dataclass
class Fragments:
    """What the rasteriser saw at every pixel centre.

    Attributes:
        face_index: ``(B, H, W)`` long, index into ``faces`` of the visible face, ``-1`` for background.
        depth: ``(B, H, W)`` metres, camera z of the visible surface at the pixel centre, ``+inf``
            for background.
        bary: ``(B, H, W, 3)`` perspective-correct barycentric coordinates of the pixel centre in
            its face (weights of the face's vertices 0, 1, 2; they sum to 1), zeros for background.
    """

    face_index: torch.Tensor
    depth: torch.Tensor
    bary: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """``(B, H, W)`` bool: pixels covered by a face."""
        return self.face_index >= 0

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` pixels."""
        return tuple(self.face_index.shape[1:3])


@dataclass
class Rendering:
    """Output of :func:`render_mesh`.

    Attributes:
        rgb: ``(B, 3, H, W)`` in ``[0, 1]``: shaded colour of the covered part of each pixel
            (not premultiplied), zeros where nothing is covered.
        mask: ``(B, H, W)`` bool, ``coverage > 0.5``.
        coverage: ``(B, H, W)`` in ``[0, 1]``: fraction of the pixel's sub-samples covered (0 or 1
            without supersampling); use it as alpha to composite with anti-aliased edges.
        fragments: :class:`Fragments` at the *rendered* resolution ``(s H, s W)``; to use them with
            :func:`point_visibility`, scale the intrinsics with :func:`scale_intrinsics`.
        supersample: the factor ``s``.
    """

    rgb: torch.Tensor
    mask: torch.Tensor
    coverage: torch.Tensor
    fragments: Fragments
    supersample: int


# --- argument checks ------------------------------------------------------------------------


def _check_float_tensor(arg: str, x, float_dtypes=(torch.float32, torch.float64)) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{arg}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in float_dtypes:
        names = " or ".join(str(d) for d in float_dtypes)
        raise TypeError(f"{arg}: expected a {names} tensor, got dtype {x.dtype}")
    return x


def _check_same_device(arg: str, x: torch.Tensor, like: torch.Tensor, like_name: str) -> None:
    if x.device != like.device:
        raise ValueError(f"{arg}: on device {x.device} but {like_name} is on {like.device}; move one of them")


def _check_finite(arg: str, x: torch.Tensor) -> None:
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{arg}: expected finite values, got NaN or infinity")


def _check_faces(faces, num_vertices: int, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(faces, torch.Tensor):
        raise TypeError(f"faces: expected a torch.Tensor of vertex indices, got {type(faces).__name__}")
    if faces.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"faces: expected an int64 (or int32) tensor of vertex indices, got dtype {faces.dtype}")
    check_shape("faces", faces, (None, 3))
    _check_same_device("faces", faces, like, "vertices")
    if faces.numel():
        lo, hi = int(faces.min()), int(faces.max())
        if lo < 0 or hi >= num_vertices:
            raise ValueError(f"faces: vertex indices must lie in [0, {num_vertices - 1}], got values in [{lo}, {hi}]")
    return faces.long()


def _check_intrinsics(focal, center, B: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = []
    for arg, x in (("focal", focal), ("center", center)):
        _check_float_tensor(arg, x, (torch.float16, torch.bfloat16, torch.float32, torch.float64))
        check_shape(arg, x, (B, 2))
        _check_same_device(arg, x, like, "vertices")
        _check_finite(arg, x)
        out.append(x.to(like.dtype))
    if B and bool((out[0] <= 0).any()):
        raise ValueError("focal: expected focal lengths > 0 pixels")
    return out[0], out[1]


def _batch_param(arg: str, value, B: int, like: torch.Tensor, minimum: float = 0.0) -> torch.Tensor:
    """A float or ``(B,)`` tensor -> ``(B,)`` tensor on ``like``'s device/dtype, checked >= minimum."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        check_positive(arg, float(value), allow_zero=True)
        return torch.full((B,), float(value), dtype=like.dtype, device=like.device)
    _check_float_tensor(arg, value)
    check_shape(arg, value, (B,))
    _check_same_device(arg, value, like, "vertices_cam")
    _check_finite(arg, value)
    if B and bool((value < minimum).any()):
        raise ValueError(f"{arg}: expected values >= {minimum}, got a minimum of {float(value.min())}")
    return value.to(like.dtype)


# --- rasterisation --------------------------------------------------------------------------


def _project(vertices: torch.Tensor, focal: torch.Tensor, center: torch.Tensor, near: float):
    """``(B, V, 3)`` camera -> pixel ``u``, ``v`` and ``1/z``, each ``(B, V)``.

    ``u`` and ``v`` are NaN for vertices at ``z <= near``: every comparison with NaN is false,
    so a face with such a vertex gets an empty pixel box and is ignored.
    """
    x, y, z = vertices.unbind(-1)
    behind = z <= near
    inv_z = 1.0 / torch.where(behind, torch.ones_like(z), z)
    nan = torch.full_like(z, float("nan"))
    u = torch.where(behind, nan, focal[:, 0:1] * x * inv_z + center[:, 0:1])
    v = torch.where(behind, nan, focal[:, 1:2] * y * inv_z + center[:, 1:2])
    return u, v, inv_z


def _edges(u: list[torch.Tensor], v: list[torch.Tensor]):
    """Oriented edge functions of triangles with corners ``(u[c], v[c])``, ``c = 0, 1, 2``.

    Edge ``i`` (opposite corner ``i``, traversed from corner ``j = i + 1`` to ``k = i + 2``) is
    ``E_i(p) = a_i (p_u - u_o) + b_i (p_v - v_o)`` with ``a_i = v_j - v_k``, ``b_i = u_k - u_j``
    and the anchor ``o`` = the edge's endpoint that comes first in (u, v) order. A face sharing the
    edge traverses it the other way: it gets exactly ``-a_i, -b_i`` (differences change sign
    exactly) and the same anchor, so at any pixel centre the two faces compute bitwise opposite
    values, and both endpoints give exactly 0. Hence no centre falls between two faces, and the
    tie rule sees exact zeros on shared vertices. ``a, b`` are then multiplied by the sign of the
    doubled signed area ``D`` so that the inside is positive (``(a, b)`` = inward normal).
    Returns lists ``a, b, u_o, v_o`` (three tensors each) and ``D``.
    """
    D = (u[1] - u[0]) * (v[2] - v[0]) - (v[1] - v[0]) * (u[2] - u[0])
    sign = torch.sign(D.detach())
    a, b, uo, vo = [], [], [], []
    for i in range(3):
        j, k = (i + 1) % 3, (i + 2) % 3
        k_first = (u[k] < u[j]) | ((u[k] == u[j]) & (v[k] < v[j]))
        uo.append(torch.where(k_first, u[k], u[j]))
        vo.append(torch.where(k_first, v[k], v[j]))
        a.append((v[j] - v[k]) * sign)
        b.append((u[k] - u[j]) * sign)
    return a, b, uo, vo, D


def _owns_ties(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Whether an oriented edge with inward normal ``(a, b)`` owns the centres lying exactly on
    it: its inward normal points to ``+u``, or to ``+v`` when the edge is horizontal."""
    return (a > 0) | ((a == 0) & (b > 0))


def _min3(x: list[torch.Tensor]) -> torch.Tensor:
    return torch.minimum(torch.minimum(x[0], x[1]), x[2])


def _max3(x: list[torch.Tensor]) -> torch.Tensor:
    return torch.maximum(torch.maximum(x[0], x[1]), x[2])


def _bbox(lo: torch.Tensor, hi: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First pixel index (as a float) with centre >= lo, and the number of centres in [lo, hi]
    clipped to [0, n) (float; NaN bounds give NaN, which compares false)."""
    first = torch.ceil(lo.clamp(-1.0, float(n))).clamp(min=0.0)
    last = torch.floor(hi.clamp(-1.0, float(n))).clamp(max=float(n - 1))
    return first, last - first + 1.0


def _candidates(sel, sx, sy, faces, cu, cv, x0, y0, nx, ny, inv_z, cull_backfaces, dims):
    """Test the pixel centres of faces ``sel`` (flat ``b * F + f``; boxes within ``sx x sy``),
    as one broadcast over ``(faces, sy, sx)``.

    Returns, for every centre covered by a face, the linear pixel index ``(b * H + y) * W + x``
    and the z-buffer key (float32 depth bits << 32 | ``b * F + f``) for ``scatter_reduce("amin")``.
    """
    F, V, H, W = dims
    a, b, uo, vo, D = _edges([x.index_select(0, sel) for x in cu], [x.index_select(0, sel) for x in cv])
    fx0, fy0 = x0.index_select(0, sel), y0.index_select(0, sel)
    dx = torch.arange(sx, dtype=fx0.dtype, device=fx0.device)
    dy = torch.arange(sy, dtype=fx0.dtype, device=fx0.device)
    px = fx0[:, None] + dx  # (n, sx): the centres' u
    py = fy0[:, None] + dy  # (n, sy)
    inside = D != 0
    if cull_backfaces:
        # OpenCV frame (y down): a face counter-clockwise from outside has D < 0 when it faces the camera.
        inside = inside & (D < 0)
    inside = inside[:, None, None]
    if sx > 1:
        inside = inside & (dx < nx.index_select(0, sel)[:, None])[:, None, :]
    if sy > 1:
        inside = inside & (dy < ny.index_select(0, sel)[:, None])[:, :, None]
    E = []
    for ai, bi, ui, vi in zip(a, b, uo, vo):
        e = (ai[:, None] * (px - ui[:, None]))[:, None, :] + (bi[:, None] * (py - vi[:, None]))[:, :, None]
        inside = inside & (e >= 0)
        E.append(e)
    hit = inside.reshape(-1).nonzero().squeeze(1)
    j = torch.div(hit, sx * sy, rounding_mode="floor")
    E = [e.reshape(-1).index_select(0, hit) for e in E]
    on_edge = [e == 0 for e in E]
    tie = on_edge[0] | on_edge[1] | on_edge[2]
    if bool(tie.any()):  # centres exactly on an edge: keep them only where the edge owns ties
        keep = torch.ones_like(tie)
        for oe, ai, bi in zip(on_edge, a, b):
            keep &= ~oe | _owns_ties(ai.index_select(0, j), bi.index_select(0, j))
        hit, j, E = hit[keep], j[keep], [e[keep] for e in E]
    rem = hit - j * (sx * sy)
    hy = torch.div(rem, sx, rounding_mode="floor")
    hx = rem - hy * sx
    fb = sel.index_select(0, j)
    bb = torch.div(fb, F, rounding_mode="floor")
    f = fb - bb * F
    w = sum(e * inv_z.index_select(0, faces[:, c].index_select(0, f) + bb * V) for c, e in enumerate(E))
    z = (E[0] + E[1] + E[2]) / w
    pixel = (bb * H + (fy0.index_select(0, j).long() + hy)) * W + fx0.index_select(0, j).long() + hx
    good = z > 0  # false (NaN) only for slivers whose edge functions all round to zero
    if not bool(good.all()):
        pixel, z, fb = pixel[good], z[good], fb[good]
    key = (z.float().view(torch.int32).long() << 32) | fb
    return pixel, key


def rasterize(
    vertices_cam: torch.Tensor,
    faces: torch.Tensor,
    focal: torch.Tensor,
    center: torch.Tensor,
    size: tuple[int, int],
    *,
    near: float = 0.01,
    cull_backfaces: bool = False,
) -> Fragments:
    """Rasterise a batch of triangle meshes that share their connectivity.

    Exact pixel-centre coverage with the top-left tie rule, a z-buffer (nearest face wins, ties to
    the lower face index) and perspective-correct barycentrics; see the module docstring.

    Args:
        vertices_cam: ``(B, V, 3)`` metres, camera frame (float32 or float64).
        faces: ``(F, 3)`` long, vertex indices shared by the batch (either winding).
        focal: ``(B, 2)`` pixels, ``(fx, fy)``, > 0.
        center: ``(B, 2)`` pixels, principal point ``(cx, cy)``.
        size: ``(H, W)`` pixels.
        near: metres; faces with a vertex at ``z <= near`` are ignored.
        cull_backfaces: also ignore faces whose normal ``(v1 - v0) x (v2 - v0)`` points away from the camera.
    Returns:
        :class:`Fragments` with ``(B, H, W)`` maps. ``depth`` and ``bary`` are differentiable
        with respect to ``vertices_cam`` (for fixed coverage); ``face_index`` is not.
    """
    _check_float_tensor("vertices_cam", vertices_cam)
    check_shape("vertices_cam", vertices_cam, ("B", "V", 3))
    _check_finite("vertices_cam", vertices_cam)
    B, V, _ = vertices_cam.shape
    faces = _check_faces(faces, V, vertices_cam)
    focal, center = _check_intrinsics(focal, center, B, vertices_cam)
    H, W = check_size_pair("size", size)
    check_positive("near", near)
    if not isinstance(cull_backfaces, bool):
        raise TypeError(f"cull_backfaces: expected a bool, got {type(cull_backfaces).__name__}")
    F = faces.shape[0]
    device, dtype = vertices_cam.device, vertices_cam.dtype
    if B * F >= 2**31 or B * V >= 2**31:
        raise ValueError(f"rasterize: batch x faces and batch x vertices must be < 2**31, got {B} x {F}, {B} x {V}")

    face_index = torch.full((B, H, W), -1, dtype=torch.long, device=device)
    depth = torch.full((B, H, W), float("inf"), dtype=dtype, device=device)
    bary = torch.zeros((B, H, W, 3), dtype=dtype, device=device)
    if B == 0 or F == 0 or V == 0:
        return Fragments(face_index, depth, bary)

    with torch.no_grad():
        # Per face (flat index b * F + f): corners in pixels and the box of pixel centres they span.
        u, v, inv_z = _project(vertices_cam.detach(), focal, center, near)
        cu = [u.index_select(1, faces[:, c]).reshape(-1) for c in range(3)]
        cv = [v.index_select(1, faces[:, c]).reshape(-1) for c in range(3)]
        x0, nx = _bbox(_min3(cu), _max3(cu), W)
        y0, ny = _bbox(_min3(cv), _max3(cv), H)
        valid = (nx > 0) & (ny > 0)  # NaN (a vertex behind the near plane) compares false
        if cull_backfaces:  # drop back faces before any per-candidate work (see _candidates)
            valid &= (cu[1] - cu[0]) * (cv[2] - cv[0]) - (cv[1] - cv[0]) * (cu[2] - cu[0]) < 0

        # Buckets of faces whose boxes fit in 2^kx x 2^ky centres, each tested as one broadcast
        # (no per-candidate gathers); kx = number of bits of nx - 1.
        levels = max(H, W).bit_length() + 1
        kx = torch.frexp(torch.where(valid, nx - 1.0, 0.0)).exponent
        ky = torch.frexp(torch.where(valid, ny - 1.0, 0.0)).exponent
        bucket = torch.where(valid, kx * levels + ky, levels * levels).to(torch.int16)
        order = torch.argsort(bucket, stable=True)
        per_bucket = torch.bincount(bucket.long(), minlength=levels * levels + 1).tolist()

        zbuf = torch.full((B * H * W,), _KEY_NONE, dtype=torch.long, device=device)
        flat_inv_z = inv_z.reshape(-1)
        first = 0
        for k, n_k in enumerate(per_bucket[:-1]):
            if n_k == 0:
                continue
            sx, sy = 1 << (k // levels), 1 << (k % levels)
            for sel in order[first : first + n_k].split(max(1, _CHUNK // (sx * sy))):
                pixel, key = _candidates(
                    sel, sx, sy, faces, cu, cv, x0, y0, nx, ny, flat_inv_z, cull_backfaces, (F, V, H, W)
                )
                zbuf.scatter_reduce_(0, pixel, key, reduce="amin")
            first += n_k

        covered = (zbuf != _KEY_NONE).nonzero().squeeze(1)
        fb = zbuf.index_select(0, covered) & _LOW32  # b * F + f of each winning face

    # Per covered pixel: barycentrics and depth of the winning face (differentiable).
    u, v, inv_z = (x.reshape(-1) for x in _project(vertices_cam, focal, center, near))
    b = torch.div(fb, F, rounding_mode="floor")
    f = fb - b * F
    corner = [faces[:, c].index_select(0, f) + b * V for c in range(3)]
    a, bc, uo, vo, _ = _edges([u.index_select(0, i) for i in corner], [v.index_select(0, i) for i in corner])
    px = (covered % W).to(dtype)
    py = (torch.div(covered, W, rounding_mode="floor") % H).to(dtype)
    E = [ai * (px - ui) + bi * (py - vi) for ai, bi, ui, vi in zip(a, bc, uo, vo)]
    w = torch.stack([e * inv_z.index_select(0, i) for e, i in zip(E, corner)], 1)
    wsum = w.sum(1)
    face_index.view(-1)[covered] = f
    depth = depth.view(-1).index_put((covered,), (E[0] + E[1] + E[2]) / wsum).view(B, H, W)
    bary = bary.view(-1, 3).index_put((covered,), w / wsum[:, None]).view(B, H, W, 3)
    return Fragments(face_index, depth, bary)


# --- attributes and shading -----------------------------------------------------------------


def _pixel_corners(fragments: Fragments, faces: torch.Tensor, V: int):
    """Covered pixels (flat indices into ``B * H * W``), their barycentrics ``(P, 3)`` and the flat
    indices ``b * V + vertex`` of their face's three corners (list of three ``(P,)``)."""
    B, H, W = fragments.face_index.shape
    pix = (fragments.face_index.reshape(-1) >= 0).nonzero().squeeze(1)
    f = fragments.face_index.reshape(-1).index_select(0, pix)
    if f.numel() and bool((f >= faces.shape[0]).any()):
        raise ValueError(f"fragments: face_index refers to faces beyond the {faces.shape[0]} in `faces`")
    b = torch.div(pix, H * W, rounding_mode="floor")
    corners = [faces[:, c].index_select(0, f) + b * V for c in range(3)]
    return pix, fragments.bary.reshape(-1, 3).index_select(0, pix), corners


def _gather_corners(flat: torch.Tensor, corners: list[torch.Tensor]) -> list[torch.Tensor]:
    """``flat`` ``(B V, C)`` per-vertex rows -> the rows at each corner, three ``(P, C)``."""
    return [flat.index_select(0, i) for i in corners]


def _scatter_pixels(values: torch.Tensor, pix: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """``(P, C)`` values at flat pixels ``pix`` -> ``(B, H, W, C)``, zeros elsewhere."""
    B, H, W = shape
    out = values.new_zeros(B * H * W, values.shape[1])
    return out.index_put((pix,), values).view(B, H, W, values.shape[1])


def interpolate(fragments: Fragments, faces: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
    """Interpolate per-vertex attributes at every pixel with the fragments' barycentrics.

    Args:
        fragments: from :func:`rasterize`, ``(B, H, W)`` maps.
        faces: ``(F, 3)`` long, the faces that were rasterised.
        attributes: ``(B, V, C)`` per-vertex values (any units).
    Returns:
        ``(B, H, W, C)``; zeros on background pixels.
    """
    if not isinstance(fragments, Fragments):
        raise TypeError(f"fragments: expected Fragments from rasterize(), got {type(fragments).__name__}")
    _check_float_tensor("attributes", attributes)
    B, H, W = fragments.face_index.shape
    check_shape("attributes", attributes, (B, None, None))
    _check_same_device("fragments", fragments.face_index, attributes, "attributes")
    faces = _check_faces(faces, attributes.shape[1], attributes)
    V, Cn = attributes.shape[1], attributes.shape[2]
    pix, bary, corners = _pixel_corners(fragments, faces, V)
    bary = bary.to(attributes.dtype)
    c0, c1, c2 = _gather_corners(attributes.reshape(B * V, Cn), corners)
    values = bary[:, 0:1] * c0 + bary[:, 1:2] * c1 + bary[:, 2:3] * c2
    return _scatter_pixels(values, pix, (B, H, W))


def _cross(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[torch.Tensor]:
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def _incidence(faces: torch.Tensor, V: int, dtype: torch.dtype) -> torch.Tensor:
    """``(V, F)`` sparse CSR matrix with a 1 where vertex ``v`` is a corner of face ``f``."""
    F = faces.shape[0]
    vid = faces.reshape(-1)
    order = torch.argsort(vid, stable=True)
    fid = torch.div(order, 3, rounding_mode="floor")
    crow = torch.zeros(V + 1, dtype=torch.long, device=faces.device)
    crow[1:] = torch.cumsum(torch.bincount(vid, minlength=V), 0)
    ones = torch.ones(3 * F, dtype=dtype, device=faces.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, fid, ones, size=(V, F))


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Smooth per-vertex normals: area-weighted sums of the adjacent faces' normals, unit length.

    The normal of a face is along ``(v1 - v0) x (v2 - v0)``, so the normals point outwards for a
    counter-clockwise-from-outside mesh (inwards for the other winding). The sums are one sparse
    (vertex x face incidence) matrix product, no atomic adds. Vertices used by no face (or only
    by degenerate faces) get zeros. Differentiable.

    Args:
        vertices: ``(B, V, 3)`` metres (any frame).
        faces: ``(F, 3)`` long vertex indices.
    Returns:
        ``(B, V, 3)`` unit normals in the frame of ``vertices``.
    """
    _check_float_tensor("vertices", vertices)
    check_shape("vertices", vertices, (None, None, 3))
    B, V, _ = vertices.shape
    faces = _check_faces(faces, V, vertices)
    F = faces.shape[0]
    if F == 0 or B == 0:
        return torch.zeros_like(vertices)
    X = vertices.permute(1, 2, 0).reshape(V, 3 * B)  # row v = (x of every sample, y ..., z ...)
    corner = [X.index_select(0, faces[:, c]).view(F, 3, B) for c in range(3)]
    e1, e2 = corner[1] - corner[0], corner[2] - corner[0]
    fn = torch.stack(_cross(e1.unbind(1), e2.unbind(1)), 1).view(F, 3 * B)
    total = torch.sparse.mm(_incidence(faces, V, vertices.dtype), fn).view(V, 3, B)
    length = (total * total).sum(1, keepdim=True).sqrt().clamp(min=1e-12)
    return (total / length).permute(2, 0, 1).contiguous()


def shade(
    fragments: Fragments,
    vertices_cam: torch.Tensor,
    faces: torch.Tensor,
    vertex_colours: torch.Tensor,
    light_dir: torch.Tensor,
    ambient: torch.Tensor | float,
    diffuse: torch.Tensor | float,
    specular: torch.Tensor | float = 0.0,
    shininess: float = 32.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth-shade rasterised meshes: Lambertian ambient + diffuse, optional Blinn-Phong highlight.

    ``rgb = colour * (ambient + diffuse * max(0, n.l)) + specular * max(0, n.h)^shininess``
    (white highlight, only where ``n.l > 0``), clamped to ``[0, 1]``. ``n`` is the interpolated
    vertex normal, flipped on faces seen from their back (two-sided lighting, so either winding
    works), ``l`` the unit light direction, ``h`` the half-vector between ``l`` and the direction
    to the camera.

    Args:
        fragments: from :func:`rasterize` on the same ``vertices_cam`` and ``faces``.
        vertices_cam: ``(B, V, 3)`` metres, camera frame.
        faces: ``(F, 3)`` long.
        vertex_colours: ``(B, V, 3)`` RGB in ``[0, 1]``.
        light_dir: ``(B, 3)`` camera frame, direction from the surface *towards* the light (any
            length > 0); e.g. ``(0, 0, -1)`` is a light at the camera.
        ambient, diffuse, specular: ``(B,)`` tensors or floats, >= 0.
        shininess: Blinn-Phong exponent, > 0.
    Returns:
        ``rgb`` ``(B, 3, H, W)`` in ``[0, 1]`` (zeros on background) and ``mask`` ``(B, H, W)`` bool.
    """
    _check_float_tensor("vertices_cam", vertices_cam)
    check_shape("vertices_cam", vertices_cam, ("B", "V", 3))
    B, V, _ = vertices_cam.shape
    if not isinstance(fragments, Fragments):
        raise TypeError(f"fragments: expected Fragments from rasterize(), got {type(fragments).__name__}")
    check_shape("fragments.face_index", fragments.face_index, (B, None, None))
    _check_same_device("fragments", fragments.face_index, vertices_cam, "vertices_cam")
    _check_float_tensor("vertex_colours", vertex_colours)
    check_shape("vertex_colours", vertex_colours, (B, V, 3))
    _check_same_device("vertex_colours", vertex_colours, vertices_cam, "vertices_cam")
    _check_float_tensor("light_dir", light_dir)
    check_shape("light_dir", light_dir, (B, 3))
    _check_same_device("light_dir", light_dir, vertices_cam, "vertices_cam")
    _check_finite("light_dir", light_dir)
    if B and bool((light_dir.norm(dim=-1) == 0).any()):
        raise ValueError("light_dir: expected non-zero direction vectors")
    amb = _batch_param("ambient", ambient, B, vertices_cam)
    dif = _batch_param("diffuse", diffuse, B, vertices_cam)
    spe = _batch_param("specular", specular, B, vertices_cam)
    check_positive("shininess", shininess)
    faces = _check_faces(faces, V, vertices_cam)
    H, W = fragments.face_index.shape[1:]
    dtype = vertices_cam.dtype

    mask = fragments.face_index >= 0
    pix, bary, corners = _pixel_corners(fragments, faces, V)
    bary = bary.to(dtype)
    attrs = torch.cat([vertex_normals(vertices_cam, faces), vertices_cam, vertex_colours.to(dtype)], -1)
    c = _gather_corners(attrs.reshape(B * V, 9), corners)  # three (P, 9)
    value = bary[:, 0:1] * c[0] + bary[:, 1:2] * c[1] + bary[:, 2:3] * c[2]
    normal, point, colour = value[:, 0:3], value[:, 3:6], value[:, 6:9]
    # Two-sided lighting: flip the normal on faces whose geometric normal points away from the camera.
    e1, e2 = c[1][:, 3:6] - c[0][:, 3:6], c[2][:, 3:6] - c[0][:, 3:6]
    face_normal = torch.linalg.cross(e1, e2)
    back = (face_normal * c[0][:, 3:6]).sum(-1, keepdim=True) > 0
    n = nnf.normalize(torch.where(back, -normal, normal), dim=-1, eps=1e-12)
    b = torch.div(pix, H * W, rounding_mode="floor")
    light = nnf.normalize(light_dir.to(dtype), dim=-1).index_select(0, b)  # (P, 3)
    cos = (n * light).sum(-1).clamp(min=0)
    rgb = colour * (amb.index_select(0, b) + dif.index_select(0, b) * cos)[:, None]
    if bool((spe > 0).any()):
        view = nnf.normalize(-point, dim=-1, eps=1e-12)
        half = nnf.normalize(light + view, dim=-1, eps=1e-12)
        highlight = (n * half).sum(-1).clamp(min=0) ** shininess * (cos > 0)
        rgb = rgb + (spe.index_select(0, b) * highlight)[:, None]
    rgb = _scatter_pixels(rgb.clamp(0.0, 1.0), pix, (B, H, W)).permute(0, 3, 1, 2).contiguous()
    return rgb, mask


def scale_intrinsics(focal: torch.Tensor, center: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Intrinsics of the same camera on a grid ``factor`` times finer (pixel-centre convention).

    Fine pixel ``i`` has its centre at coarse coordinate ``(i + 0.5) / factor - 0.5``, hence
    ``focal * factor`` and ``center * factor + (factor - 1) / 2``.

    Args:
        focal, center: ``(B, 2)`` pixels.
        factor: int >= 1.
    Returns:
        ``(focal, center)`` ``(B, 2)`` pixels of the fine grid.
    """
    factor = check_int("factor", factor)
    return focal * factor, center * factor + (factor - 1) / 2


def render_mesh(
    vertices_cam: torch.Tensor,
    faces: torch.Tensor,
    focal: torch.Tensor,
    center: torch.Tensor,
    size: tuple[int, int],
    vertex_colours: torch.Tensor,
    light_dir: torch.Tensor,
    ambient: torch.Tensor | float,
    diffuse: torch.Tensor | float,
    specular: torch.Tensor | float = 0.0,
    *,
    shininess: float = 32.0,
    supersample: int = 1,
    near: float = 0.01,
    cull_backfaces: bool = False,
) -> Rendering:
    """Rasterise and shade in one call, optionally supersampled for anti-aliased edges.

    With ``supersample = s`` the mesh is rendered at ``(s H, s W)`` (intrinsics from
    :func:`scale_intrinsics`) and average-pooled back: ``coverage`` is the covered fraction of
    each pixel, ``rgb`` the mean colour of its covered sub-samples, ``mask = coverage > 0.5``.

    Args:
        vertices_cam, faces, focal, center, size, near, cull_backfaces: as in :func:`rasterize`.
        vertex_colours, light_dir, ambient, diffuse, specular, shininess: as in :func:`shade`.
        supersample: int >= 1.
    Returns:
        :class:`Rendering` (``rgb`` ``(B, 3, H, W)``, ``mask`` and ``coverage`` ``(B, H, W)``, and
        the fragments at the rendered resolution).
    """
    s = check_int("supersample", supersample)
    H, W = check_size_pair("size", size)
    _check_float_tensor("vertices_cam", vertices_cam)
    check_shape("vertices_cam", vertices_cam, ("B", None, 3))
    B = vertices_cam.shape[0]
    focal, center = _check_intrinsics(focal, center, B, vertices_cam)
    focal_s, center_s = scale_intrinsics(focal, center, s)
    frags = rasterize(
        vertices_cam, faces, focal_s, center_s, (s * H, s * W), near=near, cull_backfaces=cull_backfaces
    )
    rgb, mask = shade(frags, vertices_cam, faces, vertex_colours, light_dir, ambient, diffuse, specular, shininess)
    if s == 1:
        return Rendering(rgb, mask, mask.to(rgb.dtype), frags, 1)
    coverage = nnf.avg_pool2d(mask[:, None].to(rgb.dtype), s)[:, 0]
    summed = nnf.avg_pool2d(rgb, s)  # rgb is zero where not covered
    rgb = torch.where(coverage[:, None] > 0, summed / coverage[:, None].clamp(min=1e-12), torch.zeros_like(summed))
    return Rendering(rgb.clamp(0.0, 1.0), coverage > 0.5, coverage, frags, s)


# --- overlays -------------------------------------------------------------------------------

OVERLAY_COLOUR = (0.55, 0.7, 0.95)
"""RGB in ``[0, 1]`` of :func:`overlay_mesh`'s meshes (light blue: stands out on skin and clothing)."""

OVERLAY_LIGHT_DIR = (0.0, -0.3, -1.0)
"""Camera-frame direction towards :func:`overlay_mesh`'s light: at the camera, slightly above it
(y is down), so every visible surface is lit and the shading follows the surface's slant."""

OVERLAY_AMBIENT = 0.4
OVERLAY_DIFFUSE = 0.6
"""Ambient and diffuse weights of :func:`overlay_mesh`: a surface facing the light gets the full
colour, one at a grazing angle 40 % of it."""


def _check_images(images, B: int, like: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` uint8, or floats in ``[0, 1]``, on ``like``'s device -> floats of ``like``'s dtype."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images: expected a torch.Tensor, got {type(images).__name__}")
    check_shape("images", images, (B, 3, None, None))
    _check_same_device("images", images, like, "vertices_cam")
    if images.dtype == torch.uint8:
        return images.to(like.dtype) / 255.0
    if not images.is_floating_point():
        raise TypeError(f"images: expected uint8 or floats in [0, 1], got dtype {images.dtype}")
    if images.numel():
        lo, hi = float(images.min()), float(images.max())
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise ValueError(f"images: expected float values in [0, 1] (or uint8), got values in [{lo:.3g}, {hi:.3g}]")
    return images.to(like.dtype)


def _check_colour(colour, like: torch.Tensor) -> torch.Tensor:
    """One RGB colour (three numbers in ``[0, 1]``) -> a ``(3,)`` tensor on ``like``'s device and dtype."""
    try:
        rgb = torch.as_tensor(colour, dtype=like.dtype).to(like.device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"colour: expected three numbers (R, G, B) in [0, 1], got {colour!r}") from exc
    if rgb.shape != (3,) or not bool(torch.isfinite(rgb).all()) or bool((rgb < 0).any() | (rgb > 1).any()):
        raise ValueError(f"colour: expected three numbers (R, G, B) in [0, 1], got {colour!r}")
    return rgb


def overlay_mesh(
    images: torch.Tensor,
    vertices_cam: torch.Tensor,
    faces: torch.Tensor,
    focal: torch.Tensor,
    center: torch.Tensor,
    colour=OVERLAY_COLOUR,
    alpha: float = 0.6,
    supersample: int = 2,
) -> torch.Tensor:
    """Meshes drawn semi-transparently over their images, e.g. a recovered body over its input crop.

    Each mesh is rendered with :func:`render_mesh` in one plain colour, lit by
    :data:`OVERLAY_LIGHT_DIR` with :data:`OVERLAY_AMBIENT` and :data:`OVERLAY_DIFFUSE` (no
    specular, two-sided, no back-face culling, so either winding works) and blended over the image
    with weight ``alpha * coverage``: ``out = (1 - w) image + w shaded``. Anti-aliased edges come
    from ``coverage`` (``supersample`` sub-samples per pixel side); where nothing is covered (a mesh
    behind the camera, outside the crop) the image is returned unchanged.

    Args:
        images: ``(B, 3, H, W)`` uint8, or floats in ``[0, 1]``, on the vertices' device.
        vertices_cam: ``(B, V, 3)`` metres, camera frame (OpenCV: x right, y down, z forward),
            float32 or float64.
        faces: ``(F, 3)`` long vertex indices shared by the batch.
        focal, center: ``(B, 2)`` pixels, the images' intrinsics.
        colour: three numbers ``(R, G, B)`` in ``[0, 1]`` (:data:`OVERLAY_COLOUR`).
        alpha: opacity of a fully covered pixel, in ``[0, 1]``.
        supersample: int >= 1, as in :func:`render_mesh`.
    Returns:
        ``(B, 3, H, W)`` floats in ``[0, 1]`` of the vertices' dtype and device.
    """
    _check_float_tensor("vertices_cam", vertices_cam)
    check_shape("vertices_cam", vertices_cam, ("B", None, 3))
    B, V, _ = vertices_cam.shape
    base = _check_images(images, B, vertices_cam)
    rgb = _check_colour(colour, vertices_cam)
    check_positive("alpha", alpha, allow_zero=True)
    if alpha > 1:
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    light = torch.tensor(OVERLAY_LIGHT_DIR, dtype=vertices_cam.dtype, device=vertices_cam.device).expand(B, 3)
    rendering = render_mesh(
        vertices_cam, faces, focal, center, tuple(base.shape[2:]), rgb.expand(B, V, 3), light,
        OVERLAY_AMBIENT, OVERLAY_DIFFUSE, supersample=supersample,
    )
    weight = (alpha * rendering.coverage)[:, None]  # (B, 1, H, W); exactly 0 where nothing is covered
    return (base * (1 - weight) + rendering.rgb * weight).clamp(0.0, 1.0)


# --- visibility -----------------------------------------------------------------------------


def point_visibility(
    points_cam: torch.Tensor,
    fragments: Fragments,
    focal: torch.Tensor,
    center: torch.Tensor,
    tolerance_m: float = 0.05,
) -> torch.Tensor:
    """Which 3D points (e.g. keypoints) are seen in the rendered image.

    A point is visible when it is in front of the camera (``z > 0``), its projection falls inside
    the image (the pixel whose centre is nearest, ``round(u)``, ``round(v)``, exists) and it lies
    at most ``tolerance_m`` behind the rendered surface at that pixel (``z <= depth + tolerance_m``;
    background depth is ``+inf``). Keypoints inside the body sit a few centimetres behind the skin
    they belong to; the tolerance keeps them visible while the body itself hides those on its far side.

    Args:
        points_cam: ``(B, K, 3)`` metres, camera frame.
        fragments: from :func:`rasterize` (``(B, H, W)`` maps).
        focal, center: ``(B, 2)`` pixels, the intrinsics the fragments were rasterised with.
        tolerance_m: metres, >= 0.
    Returns:
        ``(B, K)`` bool.
    """
    _check_float_tensor("points_cam", points_cam)
    if not isinstance(fragments, Fragments):
        raise TypeError(f"fragments: expected Fragments from rasterize(), got {type(fragments).__name__}")
    B, H, W = fragments.face_index.shape
    check_shape("points_cam", points_cam, (B, None, 3))
    _check_same_device("points_cam", points_cam, fragments.depth, "fragments")
    focal, center = _check_intrinsics(focal, center, B, points_cam)
    check_positive("tolerance_m", tolerance_m, allow_zero=True)
    x, y, z = points_cam.unbind(-1)
    front = z > 0
    zs = torch.where(front, z, torch.ones_like(z))
    u = focal[:, 0:1] * x / zs + center[:, 0:1]
    v = focal[:, 1:2] * y / zs + center[:, 1:2]
    px = torch.floor(u.clamp(-2.0, W + 1.0) + 0.5).long()
    py = torch.floor(v.clamp(-2.0, H + 1.0) + 0.5).long()
    inside = front & (px >= 0) & (px < W) & (py >= 0) & (py < H) & torch.isfinite(points_cam).all(-1)
    b = torch.arange(B, device=points_cam.device).view(B, 1)
    surface = fragments.depth[b, py.clamp(0, H - 1), px.clamp(0, W - 1)].to(points_cam.dtype)
    return inside & (z <= surface + tolerance_m)
