"""Tests for poselab.data.render: exact rasterisation, z-buffer, barycentrics, shading, visibility."""

import math

import pytest
import torch

import poselab.data.render as render_module
from poselab.data.render import (
    Fragments,
    interpolate,
    overlay_mesh,
    point_visibility,
    rasterize,
    render_mesh,
    scale_intrinsics,
    shade,
    vertex_normals,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def _intrinsics(B=1, f=1.0, c=0.0, dtype=torch.float64, device="cpu"):
    """(B, 2) focal and centre."""
    focal = torch.full((B, 2), float(f), dtype=dtype, device=device)
    center = torch.full((B, 2), float(c), dtype=dtype, device=device)
    return focal, center


def _on_screen(uv, z=1.0, dtype=torch.float64):
    """Pixel positions (N, 2) at depth z -> (1, N, 3) camera-frame vertices for f = 1, c = 0."""
    uv = torch.as_tensor(uv, dtype=dtype)
    z = torch.as_tensor(z, dtype=dtype).expand(uv.shape[0])
    return torch.stack([uv[:, 0] * z, uv[:, 1] * z, z], -1)[None]


def _faces(rows):
    return torch.as_tensor(rows, dtype=torch.long)


def _mask_of(rows_cols, size):
    m = torch.zeros(size, dtype=torch.bool)
    for r, c in rows_cols:
        m[r, c] = True
    return m


def _coverage_count(vertices, faces, size, f=1.0, c=0.0):
    """How many faces cover each pixel centre, each face rasterised alone (one batch item per face).

    Item k keeps the vertices of face k and puts every other vertex behind the camera, so only
    face k survives in item k (all its neighbours have a vertex behind the near plane).
    """
    F = faces.shape[0]
    V = vertices.shape[1]
    own = torch.zeros(F, V, dtype=torch.bool)
    own[torch.arange(F)[:, None], faces] = True
    verts = vertices.expand(F, V, 3).clone()
    verts[..., 2] = torch.where(own, verts[..., 2], torch.full_like(verts[..., 2], -1.0))
    focal, center = _intrinsics(F, f, c, dtype=vertices.dtype)
    frags = rasterize(verts, faces, focal, center, size)
    return frags.mask.sum(0)


def _icosphere(level=3, dtype=torch.float64):
    """Unit icosphere, faces counter-clockwise seen from outside."""
    t = (1.0 + 5**0.5) / 2
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]  # fmt: skip
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5),
             (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]  # fmt: skip
    verts = [tuple(x / math.sqrt(sum(c * c for c in v)) for x in v) for v in verts]
    for _ in range(level):
        cache, new_faces = {}, []

        def mid(i, j):
            key = (min(i, j), max(i, j))
            if key not in cache:
                m = [(a + b) / 2 for a, b in zip(verts[i], verts[j])]
                n = math.sqrt(sum(c * c for c in m))
                verts.append(tuple(c / n for c in m))
                cache[key] = len(verts) - 1
            return cache[key]

        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new_faces
    return torch.tensor(verts, dtype=dtype), torch.tensor(faces, dtype=torch.long)


def _rotation(seed, dtype=torch.float64):
    q = torch.randn(4, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    w, x, y, z = q / q.norm()
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)]),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)]),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]),
    ])  # fmt: skip


def _sphere_scene(level=3, distance=4.0, f=60.0, size=64, seed=0, dtype=torch.float64):
    verts, faces = _icosphere(level, dtype)
    verts = verts @ _rotation(seed, dtype).T + torch.tensor([0.0, 0.0, distance], dtype=dtype)
    focal, center = _intrinsics(1, f, (size - 1) / 2, dtype)
    return verts[None], faces, focal, center, (size, size)


# --- coverage: hand-computed pixels and the tie rule ---------------------------------------------


def test_single_triangle_covers_the_hand_computed_pixel_centres():
    # Inside: u > 0.2, v > 0.2, u + v < 3.9 -> centres (u, v) = (1, 1), (2, 1), (1, 2).
    verts = _on_screen([(0.2, 0.2), (3.7, 0.2), (0.2, 3.7)], z=2.0)
    focal, center = _intrinsics()
    expected = _mask_of([(1, 1), (1, 2), (2, 1)], (5, 5))  # (row v, column u)
    for faces in (_faces([[0, 1, 2]]), _faces([[0, 2, 1]])):  # either winding
        frags = rasterize(verts, faces, focal, center, (5, 5))
        assert torch.equal(frags.mask[0], expected)
        assert torch.equal(frags.face_index[0][expected], torch.zeros(3, dtype=torch.long))
        assert torch.allclose(frags.depth[0][expected], torch.full((3,), 2.0, dtype=torch.float64))
        assert torch.isinf(frags.depth[0][~expected]).all()
        assert (frags.bary[0][~expected] == 0).all()


def test_principal_point_and_focal_length_place_the_triangle():
    # u = 10 x / z + 2, v = 20 y / z + 1: the same triangle in pixels again.
    uv = torch.tensor([(0.2, 0.2), (3.7, 0.2), (0.2, 3.7)], dtype=torch.float64)
    z = 3.0
    xy = (uv - torch.tensor([2.0, 1.0], dtype=torch.float64)) * z / torch.tensor([10.0, 20.0], dtype=torch.float64)
    verts = torch.cat([xy, torch.full((3, 1), z, dtype=torch.float64)], 1)[None]
    focal = torch.tensor([[10.0, 20.0]], dtype=torch.float64)
    center = torch.tensor([[2.0, 1.0]], dtype=torch.float64)
    frags = rasterize(verts, _faces([[0, 1, 2]]), focal, center, (5, 5))
    assert torch.equal(frags.mask[0], _mask_of([(1, 1), (1, 2), (2, 1)], (5, 5)))


@pytest.mark.parametrize("diagonal", ["main", "anti"])
@pytest.mark.parametrize("flip", [False, True])
def test_top_left_rule_on_a_square_whose_edges_pass_through_pixel_centres(diagonal, flip):
    # Square [1, 3]^2: left and top edges own their centres, right and bottom ones do not.
    verts = _on_screen([(1, 1), (3, 1), (3, 3), (1, 3)])
    faces = _faces([[0, 1, 2], [0, 2, 3]] if diagonal == "main" else [[0, 1, 3], [1, 2, 3]])
    if flip:
        faces = faces[:, [0, 2, 1]]
    count = _coverage_count(verts, faces, (5, 5))
    expected = _mask_of([(1, 1), (1, 2), (2, 1), (2, 2)], (5, 5)).long()
    assert torch.equal(count, expected)  # each centre exactly once, diagonal centres included
    frags = rasterize(verts, faces, *_intrinsics(), (5, 5))
    assert torch.equal(frags.mask[0], expected.bool())


def test_a_fan_around_a_vertex_on_a_pixel_centre_covers_every_centre_once():
    # Eight triangles around (3, 3); spokes along the axes and diagonals run through centres.
    ring = [(1, 1), (3, 1), (5, 1), (5, 3), (5, 5), (3, 5), (1, 5), (1, 3)]
    verts = _on_screen([(3, 3)] + ring)
    faces = _faces([[0, 1 + i, 1 + (i + 1) % 8] for i in range(8)])
    faces[::2] = faces[::2][:, [0, 2, 1]]  # mixed windings
    count = _coverage_count(verts, faces, (7, 7))
    expected = torch.zeros(7, 7, dtype=torch.long)
    expected[1:5, 1:5] = 1  # [1, 5) x [1, 5) by the top-left rule
    assert torch.equal(count, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("perspective", [False, True])
def test_a_random_triangulation_partitions_the_pixel_centres_exactly(dtype, perspective):
    # 12 x 12 cells; interior vertices on pixel centres (so that many edges run exactly through
    # centres) or jittered; random diagonals and windings; constant or random depths.
    # Every centre is covered exactly once.
    g = torch.Generator().manual_seed(3)
    n = 12
    grid = torch.stack(torch.meshgrid(torch.arange(n + 1.0), torch.arange(n + 1.0), indexing="xy"), -1).reshape(-1, 2)
    uv = grid.clone().double()
    jitter = (torch.rand(uv.shape, generator=g, dtype=torch.float64) - 0.5) * 0.4
    jittered = (torch.rand(uv.shape[0], generator=g) < 0.5)[:, None] & (grid > 0) & (grid < n)
    uv = torch.where(jittered, uv + jitter, uv)
    uv = torch.where(grid == 0, 0.3, torch.where(grid == n, n + 0.7, uv))  # outer boundary, off the centres
    z = 1.0 + 2.0 * torch.rand(uv.shape[0], generator=g, dtype=torch.float64) if perspective else 1.0
    verts = _on_screen(uv, z).to(dtype)
    rows = []
    for i in range(n):
        for j in range(n):
            a, b, c, d = i * (n + 1) + j, i * (n + 1) + j + 1, (i + 1) * (n + 1) + j + 1, (i + 1) * (n + 1) + j
            tris = [[a, b, c], [a, c, d]] if torch.rand(1, generator=g) < 0.5 else [[a, b, d], [b, c, d]]
            rows += [t if torch.rand(1, generator=g) < 0.5 else t[::-1] for t in tris]
    faces = _faces(rows)
    count = _coverage_count(verts, faces, (n + 2, n + 2))
    expected = torch.zeros(n + 2, n + 2, dtype=torch.long)
    expected[1 : n + 1, 1 : n + 1] = 1
    assert torch.equal(count, expected)
    # A triangle soup (every face with its own copies of the vertices) is just as watertight:
    # shared edges are recognised by their coordinates, not by vertex indices.
    soup = verts[:, faces.reshape(-1)]
    assert torch.equal(_coverage_count(soup, torch.arange(soup.shape[1]).view(-1, 3), (n + 2, n + 2)), expected)


def test_every_ray_through_a_closed_convex_mesh_crosses_it_twice():
    # Each face alone, float32, random rotation and perspective: inside the silhouette every
    # centre is covered by exactly one front and one back face; at the silhouette a front and a
    # back face share each edge on the same side, so they take or leave a centre together.
    scene = _sphere_scene(level=2, distance=3.0, f=30.0, size=40, seed=7, dtype=torch.float32)
    verts, faces, focal, center, size = scene
    count = _coverage_count(verts, faces, size, f=30.0, c=19.5)
    assert (count % 2 == 0).all() and count.max() == 2
    grid = torch.stack(torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij"), -1)
    dist = (grid - 19.5).norm(dim=-1)
    inner = 30.0 * 0.95 / math.sqrt(9.0 - 0.95**2)  # the level-2 icosphere contains the 0.95-sphere
    assert (count[dist < inner] == 2).all()
    assert (count[dist > 30.0 / math.sqrt(8.0)] == 0).all()


def _reference_rasterize(verts, faces, focal, center, size):
    """Brute force: every face against every pixel centre, nearest depth wins (no tie rule)."""
    H, W = size
    u = focal[:, None, 0] * verts[..., 0] / verts[..., 2] + center[:, None, 0]
    v = focal[:, None, 1] * verts[..., 1] / verts[..., 2] + center[:, None, 1]
    pv, pu = torch.meshgrid(torch.arange(H, dtype=verts.dtype), torch.arange(W, dtype=verts.dtype), indexing="ij")
    pu, pv = pu.reshape(1, 1, -1), pv.reshape(1, 1, -1)
    cu, cv = u[:, faces][..., None], v[:, faces][..., None]  # (B, F, 3, 1)
    E = []
    for i in range(3):
        j, k = (i + 1) % 3, (i + 2) % 3
        E.append((cu[:, :, k] - cu[:, :, j]) * (pv - cv[:, :, j]) - (cv[:, :, k] - cv[:, :, j]) * (pu - cu[:, :, j]))
    E = torch.stack(E, -1)  # (B, F, HW, 3)
    inside = (E > 0).all(-1) | (E < 0).all(-1)
    lam = E / E.sum(-1, keepdim=True)
    z = 1.0 / (lam / verts[:, faces][..., 2][:, :, None, :]).sum(-1)
    z = torch.where(inside, z, torch.full_like(z, float("inf")))
    depth, face = z.min(1)
    face = torch.where(torch.isinf(depth), -1, face)
    return face.view(-1, H, W), depth.view(-1, H, W)


@pytest.mark.parametrize("chunk", [None, 7])
def test_random_triangles_of_all_sizes_match_a_brute_force_reference(monkeypatch, chunk):
    # Tiny to image-sized triangles at random depths, a non-square image, three batch items;
    # with chunk = 7 every bucket is split into many small broadcasts.
    if chunk is not None:
        monkeypatch.setattr(render_module, "_CHUNK", chunk)
    g = torch.Generator().manual_seed(11)
    B, F, H, W = 3, 60, 40, 52
    extent = torch.tensor([W + 10.0, H + 10.0], dtype=torch.float64)
    centre = torch.rand(B, F, 1, 2, generator=g, dtype=torch.float64) * extent - 5
    scale = torch.exp(torch.rand(B, F, 1, 1, generator=g, dtype=torch.float64) * math.log(60.0)) * 0.5
    uv = centre + scale * torch.randn(B, F, 3, 2, generator=g, dtype=torch.float64)
    z = 1.0 + 4.0 * torch.rand(B, F, 3, generator=g, dtype=torch.float64)
    focal = torch.tensor([[30.0, 35.0]], dtype=torch.float64).expand(B, 2)
    center = torch.tensor([[25.0, 19.5]], dtype=torch.float64).expand(B, 2)
    xy = (uv - center[:, None, None]) / focal[:, None, None] * z[..., None]
    verts = torch.cat([xy, z[..., None]], -1).reshape(B, 3 * F, 3)
    faces = torch.arange(3 * F).view(F, 3)
    frags = rasterize(verts, faces, focal, center, (H, W))
    face, depth = _reference_rasterize(verts, faces, focal, center, (H, W))
    assert frags.mask.sum() > 0.5 * B * H * W
    assert torch.equal(frags.face_index, face)
    assert torch.allclose(frags.depth[frags.mask], depth[frags.mask], rtol=1e-12)


# --- depth test --------------------------------------------------------------------------------


def test_the_nearer_triangle_wins_regardless_of_face_order():
    tri = [(0.3, 0.3), (6.7, 0.3), (0.3, 6.7)]
    near = _on_screen(tri, 2.0)[0]
    far = _on_screen([(u + 1.0, v + 1.0) for u, v in tri], 3.0)[0]
    verts = torch.cat([near, far])[None]
    focal, center = _intrinsics()
    a = rasterize(verts, _faces([[0, 1, 2], [3, 4, 5]]), focal, center, (8, 8))
    b = rasterize(verts, _faces([[3, 4, 5], [0, 1, 2]]), focal, center, (8, 8))
    both = a.mask[0]
    assert torch.equal(both, b.mask[0])
    overlap = (a.depth[0] == 2.0) & torch.tensor([[u >= 2 and v >= 2 for u in range(8)] for v in range(8)])
    assert overlap.sum() > 3
    assert (a.face_index[0][overlap] == 0).all() and (b.face_index[0][overlap] == 1).all()
    assert torch.equal(a.depth, b.depth)
    only_far = both & (a.depth[0] == 3.0)
    assert only_far.any() and (a.face_index[0][only_far] == 1).all()


def test_interpenetrating_triangles_split_where_their_depths_cross():
    # Face 0 at z = 2 everywhere; face 1 from z = 1 (left) to z = 3 (right): it wins where u < 5.
    # Face 0 at z = 2; face 1 with 1/z = 0.225 + 0.05 u (a plane), nearer than 2 where u > 5.5.
    uv = [(0.3, 0.3), (9.7, 0.3), (0.3, 9.7), (9.7, 9.7)]
    flat = _on_screen(uv, 2.0)[0]
    tilted = _on_screen(uv, torch.tensor([1.0 / (0.225 + 0.05 * u) for u, _ in uv], dtype=torch.float64))[0]
    verts = torch.cat([flat, tilted])[None]
    faces = _faces([[0, 1, 2], [1, 3, 2], [4, 5, 6], [5, 7, 6]])
    frags = rasterize(verts, faces, *_intrinsics(), (10, 10))
    cols = torch.arange(10).expand(10, 10)
    inside = frags.mask[0]
    tilted_wins = inside & (frags.face_index[0] >= 2)
    assert torch.equal(tilted_wins, inside & (cols >= 6))
    expected = torch.minimum(torch.tensor(2.0, dtype=torch.float64), 1 / (0.225 + 0.05 * cols.double()))
    assert torch.allclose(frags.depth[0][inside], expected[inside])


def test_equal_depths_go_to_the_lower_face_index():
    tri = _on_screen([(0.3, 0.3), (4.7, 0.3), (0.3, 4.7)], 2.0)[0]
    verts = torch.cat([tri, tri])[None]
    frags = rasterize(verts, _faces([[3, 4, 5], [0, 1, 2]]), *_intrinsics(), (5, 5))
    assert (frags.face_index[0][frags.mask[0]] == 0).all()


def test_faces_behind_the_near_plane_are_ignored_and_backfaces_culled_on_request():
    verts = _on_screen([(0.3, 0.3), (4.6, 0.3), (0.3, 4.6)], 2.0)
    focal, center = _intrinsics()
    faces = _faces([[0, 1, 2]])
    behind = verts.clone()
    behind[0, 1, 2] = 0.005  # one vertex closer than near = 0.01
    assert not rasterize(behind, faces, focal, center, (5, 5)).mask.any()
    assert rasterize(behind, faces, focal, center, (5, 5), near=0.001).mask.any()
    # Screen (u right, v down): (0,0) -> (1,0) -> (0,1) is clockwise on screen, so its normal
    # (v1 - v0) x (v2 - v0) = +z points away from the camera: a back face.
    assert not rasterize(verts, faces, focal, center, (5, 5), cull_backfaces=True).mask.any()
    front = rasterize(verts, faces[:, [0, 2, 1]], focal, center, (5, 5), cull_backfaces=True).mask
    assert front.sum() == 6 and torch.equal(front, rasterize(verts, faces, focal, center, (5, 5)).mask)


def test_large_triangles_cover_the_whole_image():
    # Two triangles close to the camera spanning far beyond a 256 x 256 image.
    s = 4000.0
    verts = _on_screen([(-s, -s), (s, -s), (s, s), (-s, s)], 0.5, torch.float32)
    frags = rasterize(verts, _faces([[0, 1, 2], [0, 2, 3]]), *_intrinsics(dtype=torch.float32), (256, 256))
    assert frags.mask.all()
    assert torch.allclose(frags.depth, torch.full_like(frags.depth, 0.5))


def test_sphere_renders_without_holes_and_with_the_analytic_area():
    verts, faces, focal, center, size = _sphere_scene(level=3, distance=4.0, f=60.0, size=64)
    frags = rasterize(verts, faces, focal, center, size)
    # Silhouette of a sphere of radius R at distance d on the optical axis: a circle of radius
    # f R / sqrt(d^2 - R^2). The polyhedron lies between its in-sphere and the unit sphere.
    v0, v1, v2 = (verts[0][faces[:, i]] - torch.tensor([0, 0, 4.0], dtype=torch.float64) for i in range(3))
    n = torch.linalg.cross(v1 - v0, v2 - v0)
    r_in = ((n * v0).sum(1).abs() / n.norm(dim=1)).min().item()
    radius = lambda R: 60.0 * R / math.sqrt(16.0 - R * R)  # noqa: E731
    grid = torch.stack(torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij"), -1)
    dist = (grid - 31.5).norm(dim=-1).double()
    mask = frags.mask[0]
    assert mask[dist < radius(r_in)].all()  # no holes
    assert not mask[dist > radius(1.0)].any()
    area = math.pi * radius(1.0) ** 2
    assert abs(mask.sum().item() - area) / area < 0.03
    # Only front faces are visible on a closed mesh: culling back faces changes nothing.
    assert torch.equal(rasterize(verts, faces, focal, center, size, cull_backfaces=True).face_index, frags.face_index)
    # Depth is the near intersection of each pixel's ray with the (polyhedral) sphere.
    assert (frags.depth[0][mask] > 3.0 - 1e-9).all() and (frags.depth[0][mask] < 4.0).all()
    centre_depth = frags.depth[0][31:33, 31:33]
    assert torch.allclose(centre_depth, torch.full_like(centre_depth, 3.0), atol=0.01)


def test_sphere_faces_keep_their_coverage_under_a_permutation_of_the_faces():
    verts, faces, focal, center, size = _sphere_scene(level=2, f=50.0, size=48, seed=5)
    perm = torch.randperm(faces.shape[0], generator=torch.Generator().manual_seed(0))
    a = rasterize(verts, faces, focal, center, size)
    b = rasterize(verts, faces[perm], focal, center, size)
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.face_index[a.mask], perm[b.face_index[b.mask]])
    assert torch.allclose(a.depth[a.mask], b.depth[b.mask], rtol=0, atol=1e-12)
    again = rasterize(verts, faces, focal, center, size)  # deterministic
    assert torch.equal(a.face_index, again.face_index) and torch.equal(a.depth, again.depth)


def test_batch_items_are_independent():
    verts, faces, focal, center, size = _sphere_scene(level=2, f=50.0, size=40)
    shifted = verts + torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    both = rasterize(torch.cat([verts, shifted]), faces, focal.expand(2, 2), center.expand(2, 2), size)
    one = rasterize(shifted, faces, focal, center, size)
    assert torch.equal(both.face_index[1], one.face_index[0])
    assert torch.equal(both.depth[1], one.depth[0])
    assert not torch.equal(both.mask[0], both.mask[1])


# --- barycentrics ------------------------------------------------------------------------------


def test_barycentrics_are_perspective_correct():
    # A tilted triangle: the interpolated 3D point must project back onto each pixel centre.
    verts = torch.tensor([[[-1.0, -0.8, 2.0], [1.2, -0.5, 3.5], [-0.3, 1.0, 5.0]]], dtype=torch.float64)
    focal, center = _intrinsics(1, 20.0, 15.5)
    faces = _faces([[0, 1, 2]])
    frags = rasterize(verts, faces, focal, center, (32, 32))
    mask = frags.mask[0]
    assert mask.sum() > 50
    bary = frags.bary[0][mask]
    assert torch.allclose(bary.sum(-1), torch.ones(len(bary), dtype=torch.float64))
    assert (bary >= 0).all() and (bary <= 1).all()
    p = interpolate(frags, faces, verts)[0][mask]
    v, u = torch.nonzero(mask, as_tuple=True)
    assert torch.allclose(20.0 * p[:, 0] / p[:, 2] + 15.5, u.double(), atol=1e-9)
    assert torch.allclose(20.0 * p[:, 1] / p[:, 2] + 15.5, v.double(), atol=1e-9)
    assert torch.allclose(p[:, 2], frags.depth[0][mask], atol=1e-12)
    assert (interpolate(frags, faces, verts)[0][~mask] == 0).all()


def test_barycentrics_reproduce_vertex_attributes_at_the_vertices():
    # Each vertex sits on a pixel centre that the triangle owns (left/top edges own their centres).
    z = torch.tensor([2.0, 4.0, 8.0], dtype=torch.float64)  # powers of two keep u = f x / z exact
    attrs = torch.tensor([[[1.0, 0.0, 5.0], [0.0, 1.0, -2.0], [0.25, 0.5, 7.0]]], dtype=torch.float64)
    # Vertex 0 at (1, 1): the corner of the left (u = 1) and top (v = 1) edges.
    verts = _on_screen([(1.0, 1.0), (5.4, 1.0), (1.0, 5.4)], z)
    frags = rasterize(verts, _faces([[0, 1, 2]]), *_intrinsics(), (7, 7))
    assert frags.mask[0, 1, 1]
    assert torch.allclose(frags.bary[0, 1, 1], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(interpolate(frags, _faces([[0, 1, 2]]), attrs)[0, 1, 1], attrs[0, 0])
    assert frags.depth[0, 1, 1] == 2.0
    # Vertices 1 and 2 at (1, 1) in two other triangles that own that centre.
    for k, uv in ((1, [(4.6, 1.0), (1.0, 1.0), (4.6, 5.0)]), (2, [(0.6, 5.0), (4.6, 0.6), (1.0, 1.0)])):
        verts = _on_screen(uv, z)
        frags = rasterize(verts, _faces([[0, 1, 2]]), *_intrinsics(), (7, 7))
        assert frags.mask[0, 1, 1], k
        assert torch.allclose(interpolate(frags, _faces([[0, 1, 2]]), attrs)[0, 1, 1], attrs[0, 1 if k == 1 else 2])


def test_depth_and_barycentrics_are_differentiable_for_fixed_coverage():
    verts = torch.tensor([[[-1.03, -0.81, 2.0], [1.21, -0.52, 3.5], [-0.33, 1.07, 5.0]]], dtype=torch.float64)
    focal, center = _intrinsics(1, 6.0, 3.5)
    faces = _faces([[0, 1, 2]])

    def fn(v):
        frags = rasterize(v, faces, focal, center, (8, 8))
        return frags.depth[frags.mask], frags.bary[frags.mask]

    assert torch.autograd.gradcheck(fn, (verts.clone().requires_grad_(),))


# --- normals and shading -----------------------------------------------------------------------


def test_vertex_normals_of_a_sphere_point_outwards_and_match_a_reference():
    verts, faces = _icosphere(2)
    normals = vertex_normals(verts[None], faces)[0]
    assert torch.allclose(normals.norm(dim=-1), torch.ones(len(verts), dtype=torch.float64))
    assert ((normals * verts).sum(-1) > 0.99).all()
    # Reference: area-weighted sum with index_add on a random batch.
    g = torch.Generator().manual_seed(1)
    noisy = verts[None] + 0.05 * torch.randn((2, *verts.shape), generator=g, dtype=torch.float64)
    v0, v1, v2 = (noisy[:, faces[:, i]] for i in range(3))
    fn = torch.linalg.cross(v1 - v0, v2 - v0)
    ref = torch.zeros_like(noisy)
    for i in range(3):
        ref.index_add_(1, faces[:, i], fn)
    ref = ref / ref.norm(dim=-1, keepdim=True)
    assert torch.allclose(vertex_normals(noisy, faces), ref, atol=1e-12)


def test_normals_and_shading_are_differentiable_in_the_vertices():
    verts, faces = _icosphere(1)
    g = torch.Generator().manual_seed(2)
    noisy = (verts + 0.05 * torch.randn(verts.shape, generator=g, dtype=torch.float64))[None]
    assert torch.autograd.gradcheck(lambda x: vertex_normals(x, faces), (noisy.clone().requires_grad_(),))
    verts, faces, focal, center, size = _sphere_scene(level=1, f=10.0, size=8)
    light = torch.tensor([[0.2, -0.3, -1.0]], dtype=torch.float64)

    def image(x):
        frags = rasterize(x, faces, focal, center, size)
        return shade(frags, x, faces, torch.full_like(x, 0.5), light, 0.2, 0.6, specular=0.3)[0]

    assert torch.autograd.gradcheck(image, (verts.clone().requires_grad_(),))


def _quad(center_xyz, normal_tilt_deg, size=1.0):
    """A square facing the camera, turned about the vertical axis by ``normal_tilt_deg``."""
    t = math.radians(normal_tilt_deg)
    ex = torch.tensor([math.cos(t), 0.0, math.sin(t)], dtype=torch.float64) * size / 2
    ey = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64) * size / 2
    c = torch.tensor(center_xyz, dtype=torch.float64)
    return torch.stack([c - ex - ey, c + ex - ey, c + ex + ey, c - ex + ey])


def test_a_face_towards_the_light_is_brighter_than_one_at_a_grazing_angle():
    verts = torch.cat([_quad((-0.9, 0.0, 4.0), 0.0, 1.5), _quad((0.9, 0.0, 4.0), 60.0, 1.5)])[None]
    faces = _faces([[0, 2, 1], [0, 3, 2], [4, 6, 5], [4, 7, 6]])
    focal, center = _intrinsics(1, 40.0, 15.5)
    frags = rasterize(verts, faces, focal, center, (32, 32))
    colours = torch.full_like(verts, 0.8)
    light = torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64)  # towards the camera
    rgb, mask = shade(frags, verts, faces, colours, light, 0.1, 0.9)
    facing = mask[0] & (frags.face_index[0] < 2)
    grazing = mask[0] & (frags.face_index[0] >= 2)
    assert facing.sum() > 20 and grazing.sum() > 20
    assert torch.allclose(rgb[0, :, facing], torch.full_like(rgb[0, :, facing], 0.8))  # 0.8 * (0.1 + 0.9)
    expected = 0.8 * (0.1 + 0.9 * math.cos(math.radians(60.0)))
    assert torch.allclose(rgb[0, :, grazing], torch.full_like(rgb[0, :, grazing], expected), atol=1e-9)
    assert (rgb[0, :, ~mask[0]] == 0).all()
    # Two-sided lighting: the other winding gives the same picture.
    frags_flip = rasterize(verts, faces[:, [0, 2, 1]], focal, center, (32, 32))
    rgb_flip, _ = shade(frags_flip, verts, faces[:, [0, 2, 1]], colours, light, 0.1, 0.9)
    assert torch.allclose(rgb, rgb_flip)


def test_ambient_only_light_gives_a_constant_colour_and_specular_adds_a_highlight():
    verts, faces, focal, center, size = _sphere_scene(level=3, f=60.0, size=48)
    colours = torch.tensor([0.2, 0.6, 0.9], dtype=torch.float64).expand_as(verts).clone()
    light = torch.tensor([[0.3, -0.4, -1.0]], dtype=torch.float64)
    frags = rasterize(verts, faces, focal, center, size)
    rgb, mask = shade(frags, verts, faces, colours, light, torch.tensor([0.5], dtype=torch.float64), 0.0)
    assert torch.equal(mask, frags.mask)
    expected = (0.5 * torch.tensor([0.2, 0.6, 0.9], dtype=torch.float64))[:, None]
    assert torch.allclose(rgb[0][:, mask[0]], expected.expand(3, int(mask.sum())))
    lit, _ = shade(frags, verts, faces, colours, light, 0.2, 0.6)
    shiny, _ = shade(frags, verts, faces, colours, light, 0.2, 0.6, specular=0.5)
    assert (shiny >= lit - 1e-12).all() and (shiny - lit).max() > 0.3
    assert 0.0 <= lit.min() and lit.max() <= 1.0 and shiny.max() <= 1.0
    # The diffuse term follows n.l: brightest where the normal points at the light.
    lum = lit[0].sum(0)
    v, u = divmod(int(torch.argmax(torch.where(mask[0], lum, -1.0))), size[1])
    ray = torch.tensor([(u - 23.5) / 60.0, (v - 23.5) / 60.0, 1.0], dtype=torch.float64)
    point = ray * frags.depth[0, v, u]
    normal = point - torch.tensor([0, 0, 4.0], dtype=torch.float64)
    normal = normal / normal.norm()
    assert torch.dot(normal, light[0] / light[0].norm()) > 0.97


def test_shade_is_differentiable_in_colours_and_lights():
    verts, faces, focal, center, size = _sphere_scene(level=1, f=10.0, size=8)
    frags = rasterize(verts, faces, focal, center, size)
    colours = torch.rand(verts.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.5
    light = torch.tensor([[0.2, -0.3, -1.0]], dtype=torch.float64)
    amb = torch.tensor([0.2], dtype=torch.float64)
    dif = torch.tensor([0.5], dtype=torch.float64)

    def fn(c, l, a, d):
        return shade(frags, verts, faces, c, l, a, d)[0]

    args = tuple(x.clone().requires_grad_() for x in (colours, light, amb, dif))
    assert torch.autograd.gradcheck(fn, args)


# --- supersampling -----------------------------------------------------------------------------


def test_scale_intrinsics_maps_pixel_centres_of_the_fine_grid():
    focal, center = _intrinsics(1, 10.0, 3.0)
    f2, c2 = scale_intrinsics(focal, center, 4)
    # A point projecting to coarse u maps to fine 4 u + 1.5; fine centre i is coarse (i + 0.5)/4 - 0.5.
    x = torch.tensor(0.37, dtype=torch.float64)  # x / z with z = 1
    u = 10.0 * x + 3.0
    fine_u = f2[0, 0] * x + c2[0, 0]
    assert torch.allclose(fine_u, 4 * u + 1.5)
    assert torch.allclose((fine_u + 0.5) / 4 - 0.5, u)  # back to the coarse grid
    with pytest.raises(ValueError, match="factor"):
        scale_intrinsics(focal, center, 0)


def test_supersampling_gives_fractional_coverage_on_edges():
    # A rectangle whose right edge is at u = 3.25: pixel column 3 is 3/4 covered.
    verts = _on_screen([(-0.5, -0.5), (3.25, -0.5), (3.25, 4.5), (-0.5, 4.5)], 2.0)
    faces = _faces([[0, 1, 2], [0, 2, 3]])
    focal, center = _intrinsics()
    colours = torch.full_like(verts, 0.5)
    light = torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64)
    out = render_mesh(verts, faces, focal, center, (4, 6), colours, light, 1.0, 0.0, supersample=4)
    assert out.rgb.shape == (1, 3, 4, 6) and out.fragments.face_index.shape == (1, 16, 24)
    assert torch.allclose(out.coverage[0, :, :3], torch.ones(4, 3, dtype=torch.float64))
    assert torch.allclose(out.coverage[0, :, 3], torch.full((4,), 0.75, dtype=torch.float64))
    assert (out.coverage[0, :, 4:] == 0).all()
    assert torch.equal(out.mask[0], out.coverage[0] > 0.5)
    half = torch.tensor(0.5, dtype=torch.float64)
    assert torch.allclose(out.rgb[0][:, out.coverage[0] > 0], half)  # not premultiplied by coverage
    plain = render_mesh(verts, faces, focal, center, (4, 6), colours, light, 1.0, 0.0)
    frags = rasterize(verts, faces, focal, center, (4, 6))
    rgb, mask = shade(frags, verts, faces, colours, light, 1.0, 0.0)
    assert torch.equal(plain.rgb, rgb) and torch.equal(plain.mask, mask) and plain.supersample == 1
    assert torch.equal(plain.coverage, mask.double())


# --- visibility --------------------------------------------------------------------------------


def test_point_visibility_handles_occlusion_tolerance_and_image_bounds():
    verts, faces, focal, center, size = _sphere_scene(level=3, f=60.0, size=64)
    frags = rasterize(verts, faces, focal, center, size)
    points = torch.tensor([[
        [0.0, 0.0, 4.0],  # sphere centre: 1 m behind the front surface
        [0.0, 0.0, 2.5],  # in front of the sphere
        [0.0, 0.0, 5.5],  # behind the sphere
        [0.0, 0.0, 3.03],  # 3 cm under the surface (a keypoint inside the body)
        [0.0, 0.0, 3.10],  # 10 cm under the surface
        [0.0, 3.0, 4.0],  # projects below the image
        [2.0, 0.0, 4.0],  # beside the sphere, in the image, on background
        [0.0, 0.0, -1.0],  # behind the camera
    ]], dtype=torch.float64)  # fmt: skip
    vis = point_visibility(points, frags, focal, center)
    assert vis.tolist() == [[False, True, False, True, False, False, True, False]]
    assert point_visibility(points, frags, focal, center, tolerance_m=0.2)[0, 4]
    # Exactly on the image border (background there): u = -0.5 rounds into pixel 0, u = W - 0.5 out.
    edge = torch.tensor([[[-8.0, 0.0, 15.0], [8.0, 0.0, 15.0]]], dtype=torch.float64)  # u = 60 x / z + 31.5
    assert point_visibility(edge, frags, focal, center).tolist() == [[True, False]]


# --- bad inputs --------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    verts = _on_screen([(0.3, 0.3), (4.7, 0.3), (0.3, 4.7)], 2.0)
    faces = _faces([[0, 1, 2]])
    focal, center = _intrinsics()
    with pytest.raises(ValueError, match="vertices_cam"):
        rasterize(verts[0], faces, focal, center, (5, 5))
    with pytest.raises(TypeError, match="vertices_cam"):
        rasterize(verts.half(), faces, focal, center, (5, 5))
    with pytest.raises(TypeError, match="vertices_cam"):
        rasterize(verts.numpy(), faces, focal, center, (5, 5))
    with pytest.raises(ValueError, match="vertices_cam.*finite"):
        rasterize(verts * float("nan"), faces, focal, center, (5, 5))
    with pytest.raises(TypeError, match="faces"):
        rasterize(verts, faces.double(), focal, center, (5, 5))
    with pytest.raises(ValueError, match="faces"):
        rasterize(verts, faces[:, :2], focal, center, (5, 5))
    with pytest.raises(ValueError, match=r"faces.*\[0, 2\]"):
        rasterize(verts, faces + 1, focal, center, (5, 5))
    with pytest.raises(ValueError, match="focal"):
        rasterize(verts, faces, -focal, center, (5, 5))
    with pytest.raises(ValueError, match="focal"):
        rasterize(verts, faces, focal.expand(2, 2), center, (5, 5))
    with pytest.raises(ValueError, match="center"):
        rasterize(verts, faces, focal, center[:, :1], (5, 5))
    with pytest.raises(ValueError, match="size"):
        rasterize(verts, faces, focal, center, (5, 5, 3))
    with pytest.raises(ValueError, match="size"):
        rasterize(verts, faces, focal, center, (0, 5))
    with pytest.raises(TypeError, match="size"):
        rasterize(verts, faces, focal, center, (5.0, 5))
    with pytest.raises(ValueError, match="near"):
        rasterize(verts, faces, focal, center, (5, 5), near=0.0)
    frags = rasterize(verts, faces, focal, center, (5, 5))
    colours = torch.full_like(verts, 0.5)
    light = torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="light_dir"):
        shade(frags, verts, faces, colours, torch.zeros_like(light), 0.3, 0.7)
    with pytest.raises(ValueError, match="vertex_colours"):
        shade(frags, verts, faces, colours[:, :2], light, 0.3, 0.7)
    with pytest.raises(ValueError, match="ambient"):
        shade(frags, verts, faces, colours, light, -0.1, 0.7)
    with pytest.raises(ValueError, match="diffuse"):
        shade(frags, verts, faces, colours, light, 0.3, torch.tensor([0.5, 0.5], dtype=torch.float64))
    with pytest.raises(TypeError, match="fragments"):
        shade(frags.face_index, verts, faces, colours, light, 0.3, 0.7)
    with pytest.raises(ValueError, match="fragments"):
        interpolate(frags, _faces([[0, 1, 2]])[:0], verts)
    with pytest.raises(ValueError, match="supersample"):
        render_mesh(verts, faces, focal, center, (5, 5), colours, light, 0.3, 0.7, supersample=0)
    with pytest.raises(ValueError, match="points_cam"):
        point_visibility(verts[0], frags, focal, center)
    with pytest.raises(ValueError, match="tolerance_m"):
        point_visibility(verts, frags, focal, center, tolerance_m=-1.0)


def test_empty_inputs_give_background():
    verts = _on_screen([(0.3, 0.3), (4.7, 0.3), (0.3, 4.7)], 2.0)
    focal, center = _intrinsics()
    frags = rasterize(verts, _faces([[0, 1, 2]])[:0], focal, center, (5, 5))
    assert isinstance(frags, Fragments) and not frags.mask.any() and torch.isinf(frags.depth).all()
    away = verts + torch.tensor([100.0, 0, 0], dtype=torch.float64)
    off = rasterize(away, _faces([[0, 1, 2]]), focal, center, (5, 5))
    assert not off.mask.any()


# --- devices and dtypes ------------------------------------------------------------------------


def test_float32_matches_float64_on_a_sphere():
    verts, faces, focal, center, size = _sphere_scene(level=3, f=60.0, size=64, seed=2)
    a = rasterize(verts, faces, focal, center, size)
    b = rasterize(verts.float(), faces, focal.float(), center.float(), size)
    assert b.depth.dtype == torch.float32 and b.bary.dtype == torch.float32
    same = (a.face_index == b.face_index).float().mean()
    assert same > 0.99  # faces may differ only where a centre is within rounding of an edge
    assert torch.equal(a.mask, b.mask)
    assert torch.allclose(a.depth[a.mask].float(), b.depth[b.mask], atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_the_pipeline_runs_on_every_device_and_matches_cpu_float64(device):
    verts, faces, focal, center, size = _sphere_scene(level=3, f=60.0, size=64, seed=4)
    colours = torch.full_like(verts, 0.6)
    light = torch.tensor([[0.2, -0.5, -1.0]], dtype=torch.float64)
    ref = rasterize(verts, faces, focal, center, size)
    ref_out = render_mesh(verts, faces, focal, center, size, colours, light, 0.3, 0.7, supersample=2)
    on = [x.to(device) for x in (verts.float(), faces, focal.float(), center.float())]
    frags = rasterize(*on, size)
    assert frags.face_index.device.type == device and frags.depth.dtype == torch.float32
    assert (frags.face_index.cpu() == ref.face_index).float().mean() > 0.99
    assert torch.equal(frags.mask.cpu(), ref.mask)
    assert torch.allclose(frags.depth.cpu()[ref.mask], ref.depth[ref.mask].float(), atol=1e-4)
    again = rasterize(*on, size)  # deterministic
    assert torch.equal(again.face_index, frags.face_index) and torch.equal(again.depth, frags.depth)
    out = render_mesh(*on, size, colours.float().to(device), light.float().to(device), 0.3, 0.7, supersample=2)
    assert out.rgb.device.type == device
    assert torch.allclose(out.rgb.cpu(), ref_out.rgb.float(), atol=1e-3)
    points = torch.tensor([[[0.0, 0.0, 2.5], [0.0, 0.0, 4.0]]], device=device)
    assert point_visibility(points, frags, *on[2:]).cpu().tolist() == [[True, False]]


# --- overlays ----------------------------------------------------------------------------------


def _screen_quad(u0, v0, u1, v1, z=2.0):
    """Two triangles spanning pixels [u0, u1] x [v0, v1] at depth z (f = 1, c = 0): vertices (1, 4, 3), faces (2, 3)."""
    return _on_screen([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], z), _faces([[0, 1, 2], [0, 2, 3]])


def _crops(B=1, H=4, W=5, seed=0):
    return torch.rand(B, 3, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# A plane facing the camera under the overlay's light (0, -0.3, -1): n.l = 1 / sqrt(1.09).
_FACING = 0.4 + 0.6 / math.sqrt(1.09)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_overlay_of_a_quad_covering_the_crop_blends_the_hand_computed_shaded_colour(alpha):
    verts, faces = _screen_quad(-1.0, -1.0, 6.0, 5.0)
    focal, center = _intrinsics()
    images = _crops()
    colour = (0.2, 0.5, 1.0)
    out = overlay_mesh(images, verts, faces, focal, center, colour=colour, alpha=alpha)
    shaded = torch.tensor(colour, dtype=torch.float64)[None, :, None, None] * _FACING
    assert out.shape == (1, 3, 4, 5) and out.dtype == torch.float64
    torch.testing.assert_close(out, (1 - alpha) * images + alpha * shaded.expand_as(images))
    if alpha == 0.0:
        assert torch.equal(out, images)


def test_overlay_edges_blend_by_coverage():
    # Quad edge at u = 1: with 2 x 2 sub-samples, column 0 is covered, column 1 half covered.
    verts, faces = _screen_quad(-1.0, -1.0, 1.0, 5.0)
    focal, center = _intrinsics()
    images = _crops()
    out = overlay_mesh(images, verts, faces, focal, center, colour=(1.0, 1.0, 1.0), alpha=0.8, supersample=2)
    weight = torch.tensor([0.8, 0.4, 0.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(out, images + weight * (_FACING - images))
    sharp = overlay_mesh(images, verts, faces, focal, center, colour=(1.0, 1.0, 1.0), alpha=0.8, supersample=1)
    torch.testing.assert_close(sharp[..., 1:], images[..., 1:])  # column 1's centre u = 1 lies on the edge: not covered


@pytest.mark.parametrize("where", ["behind the camera", "outside the crop"])
def test_overlay_leaves_the_image_unchanged_where_no_mesh_is_seen(where):
    verts, faces = _screen_quad(-1.0, -1.0, 6.0, 5.0)
    moved = verts.clone()
    if where == "behind the camera":
        moved[..., 2] = -moved[..., 2]
    else:
        moved[..., 0] += 20.0
    focal, center = _intrinsics(2)
    images = _crops(2)
    out = overlay_mesh(images, torch.cat([verts, moved]), faces, focal, center, alpha=1.0)
    assert torch.equal(out[1], images[1])  # item 1 untouched, whatever item 0 does
    assert not torch.allclose(out[0], images[0])


def test_overlay_takes_uint8_images_and_follows_the_vertices_dtype():
    verts, faces = _screen_quad(0.5, 0.5, 3.5, 2.5)
    focal, center = _intrinsics()
    images = (_crops() * 255).round().to(torch.uint8)
    out = overlay_mesh(images, verts.float(), faces, focal.float(), center.float())
    ref = overlay_mesh(images.double() / 255, verts, faces, focal, center)
    assert out.dtype == torch.float32 and 0 <= float(out.min()) and float(out.max()) <= 1
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(images=_crops(2)), ValueError, r"images: expected shape \(1, 3, \*, \*\), got \(2, 3, 4, 5\)"),
    (dict(images=_crops()[:, :1]), ValueError, r"images: expected shape \(1, 3"),
    (dict(images=_crops().numpy()), TypeError, "images: expected a torch.Tensor"),
    (dict(images=_crops().long()), TypeError, "images: expected uint8 or floats"),
    (dict(images=_crops() * 2), ValueError, r"images: expected float values in \[0, 1\]"),
    (dict(colour=(1.0, 0.0)), ValueError, r"colour: expected three numbers \(R, G, B\) in \[0, 1\]"),
    (dict(colour=(1.0, 0.0, 2.0)), ValueError, "colour: expected three numbers"),
    (dict(colour="red"), ValueError, "colour: expected three numbers"),
    (dict(alpha=1.5), ValueError, r"alpha: expected a number in \[0, 1\]"),
    (dict(alpha=-0.1), ValueError, "alpha: expected a finite number >= 0"),
    (dict(supersample=0), ValueError, "supersample"),
    (dict(vertices_cam=_screen_quad(0, 0, 1, 1)[0].long()), TypeError, "vertices_cam"),
    (dict(focal=torch.ones(2, 2, dtype=torch.float64)), ValueError, "focal"),
])  # fmt: skip
def test_overlay_rejects_bad_input(kwargs, error, match):
    verts, faces = _screen_quad(0.5, 0.5, 3.5, 2.5)
    focal, center = _intrinsics()
    args = {**dict(images=_crops(), vertices_cam=verts, faces=faces, focal=focal, center=center), **kwargs}
    with pytest.raises(error, match=match):
        overlay_mesh(**args)


def test_overlay_of_the_ground_truth_mesh_covers_the_image_set_silhouettes():
    from poselab.data.body import body_model, to_camera_frame
    from poselab.data.images import render_image_set

    people = render_image_set("train", "synthetic", 4, 64, seed=0, device="cpu", cache=False, progress=False)
    people = people.subset(slice(0, 2))
    body = body_model("cpu")
    pose = torch.cat([people.pose, torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(2, 31, 1, 4)], dim=2)
    verts = body.forward(to_camera_frame(pose, people.rotation, people.translation), people.phenotypes).vertices
    args = (verts, body.faces, people.focal, people.center)
    out = overlay_mesh(people.images, *args)
    # Coverage from the public output: over black and white images, alpha = 1, the difference is 1 - coverage.
    black = overlay_mesh(torch.zeros(2, 3, 64, 64), *args, alpha=1.0)
    white = overlay_mesh(torch.ones(2, 3, 64, 64), *args, alpha=1.0)
    coverage = 1 - (white - black).mean(1)
    covered = coverage > 0.5  # the image set's masks use the same rule
    iou = (covered & people.masks).sum((1, 2)) / (covered | people.masks).sum((1, 2))
    assert (iou > 0.9).all(), iou
    changed = (out - people.float_images()).abs().amax(1) > 0
    assert not (changed & (coverage < 1e-6)).any()  # nothing drawn where the mesh is not
    assert changed[covered].float().mean() > 0.99


@CUDA
def test_overlay_on_cuda_matches_cpu():
    verts, faces, focal, center, size = _sphere_scene(level=3, f=60.0, size=32, seed=1)
    images = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    ref = overlay_mesh(images, verts.float(), faces, focal.float(), center.float())
    on = [x.to("cuda") for x in (images, verts.float(), faces, focal.float(), center.float())]
    out = overlay_mesh(*on)
    assert out.device.type == "cuda"
    assert torch.allclose(out.cpu(), ref, atol=1e-3)
