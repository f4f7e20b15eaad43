"""Tests for poselab.data.images: rendered person crops, their labels, cameras and cached sets.

Images are tiny (32 px, a handful per look) so that the file runs in seconds on a CPU; the Anny
model is built once per process.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from poselab.data import images as I
from poselab.data.body import body_model
from poselab.data.images import (
    CAMERA_RANGES,
    CROP_MARGIN,
    IMAGE_SPLITS,
    LOOKS,
    PersonImages,
    render_image_set,
    render_people,
    image_split_clips,
)
from poselab.data.lifting import EXCLUDED_PROPORTIONS, SPLIT_SUBJECTS
from poselab.data.render import point_visibility, rasterize, scale_intrinsics

S = 32  # crop side
N = 6  # images per look
FIELDS = {  # name -> (shape after N, dtype)
    "images": ((3, S, S), torch.uint8),
    "masks": ((S, S), torch.bool),
    "keypoints": ((17, 2), torch.float32),
    "in_crop": ((17,), torch.bool),
    "visible": ((17,), torch.bool),
    "joints": ((17, 2), torch.float32),
    "joints_cam": ((17, 3), torch.float32),
    "focal": ((2,), torch.float32),
    "center": ((2,), torch.float32),
    "rotation": ((3, 3), torch.float32),
    "translation": ((3,), torch.float32),
    "pose": ((31, 3, 4), torch.float32),
    "phenotypes": ((6,), torch.float32),
    "subject": ((), torch.int64),
    "clip": ((), torch.int64),
    "frame": ((), torch.int64),
}
PELVIS, R_ANKLE, L_ANKLE, HEAD_TOP = 0, 3, 6, 10  # H36M-17


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def train_clips():
    return image_split_clips("train")


@pytest.fixture(scope="module")
def people(train_clips):
    """``{look: PersonImages}``: N crops of S px per look, seed 0, on the CPU."""
    return {look: render_people(train_clips, N, look, S, _gen(0), "cpu") for look in LOOKS}


def _project(points, focal, center):
    return points[..., :2] / points[..., 2:] * focal[:, None] + center[:, None]


def _at_pixels(maps, points):
    """``maps (B, H, W)`` read at the rounded pixel of each ``points (B, K, 2)`` (u, v)."""
    pix = points.round().long().clamp(0, maps.shape[-1] - 1)
    return maps[torch.arange(maps.shape[0])[:, None], pix[..., 1], pix[..., 0]]


def _span(mask):
    """First index, last index of the True entries along dim 1 of ``mask (B, L)``."""
    idx = torch.arange(mask.shape[1])
    return torch.where(mask, idx, mask.shape[1]).amin(1), torch.where(mask, idx, -1).amax(1)


# --------------------------------------------------------------------------------- render_people


@pytest.mark.parametrize("look", LOOKS)
def test_render_people_fields_have_documented_shapes_and_dtypes(people, look, train_clips):
    p = people[look]
    assert isinstance(p, PersonImages) and len(p) == N and p.size == S and p.look == look
    for name, (shape, dtype) in FIELDS.items():
        value = getattr(p, name)
        assert value.device.type == "cpu", name
        assert tuple(value.shape) == (N, *shape), name
        assert value.dtype == dtype, name
    assert p.clip_names == tuple(c.name for c in train_clips)
    assert ((p.clip >= 0) & (p.clip < len(train_clips))).all()
    frames = torch.tensor([train_clips[c].frames for c in p.clip.tolist()])
    assert ((p.frame >= 0) & (p.frame < frames)).all()
    assert p.subject.tolist() == [train_clips[c].subject for c in p.clip.tolist()]
    assert ((p.phenotypes >= 0) & (p.phenotypes <= 1)).all()
    for name in ("keypoints", "joints", "joints_cam", "focal", "center", "rotation", "translation", "pose"):
        assert torch.isfinite(getattr(p, name)).all(), name
    assert p.images.flatten(1).float().std(dim=1).min() > 5  # not blank
    assert p.masks.flatten(1).any(dim=1).all()  # every crop shows a person


@pytest.mark.parametrize("look", LOOKS)
def test_render_people_is_deterministic_given_the_generator(people, look, train_clips):
    again = render_people(train_clips, N, look, S, _gen(0), "cpu")
    for name in PersonImages._TENSORS:
        assert torch.equal(getattr(again, name), getattr(people[look], name)), name
    other = render_people(train_clips, N, look, S, _gen(1), "cpu")
    assert not torch.equal(other.images, again.images)
    assert not torch.equal(other.keypoints, again.keypoints)


@pytest.mark.parametrize("look", LOOKS)
def test_labels_follow_the_crop_camera(people, look):
    p = people[look]
    # joints are the camera-frame joints projected with the crop intrinsics
    torch.testing.assert_close(_project(p.joints_cam, p.focal, p.center), p.joints, atol=1e-3, rtol=0)
    assert (p.joints_cam[..., 2] > 0).all()
    torch.testing.assert_close(p.focal[:, 0], p.focal[:, 1])  # square pixels
    # in_crop: exactly the keypoints inside [-0.5, S - 0.5)^2; visible ones are a subset
    inside = ((p.keypoints > -0.5) & (p.keypoints < S - 0.5)).all(dim=-1)
    assert torch.equal(p.in_crop, inside)
    assert not (p.visible & ~p.in_crop).any()
    assert p.visible.any(dim=1).all()


@pytest.mark.parametrize("look", LOOKS)
def test_stored_pose_and_shape_rebuild_the_labels(people, look):
    """pose + phenotypes + (R, t) reproduce joints_cam and keypoints through Anny."""
    p = people[look]
    body = body_model("cpu")
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(N, 31, 1, 4)
    out = body(torch.cat([p.pose, bottom], dim=2), p.phenotypes)

    def to_cam(points):
        return torch.einsum("bij,bnj->bni", p.rotation, points) + p.translation[:, None]

    torch.testing.assert_close(to_cam(out.joints), p.joints_cam, atol=1e-4, rtol=0)
    torch.testing.assert_close(_project(to_cam(out.keypoints), p.focal, p.center), p.keypoints, atol=1e-2, rtol=0)


def test_synthetic_visibility_is_the_depth_test_against_the_rebuilt_body(people):
    """Synthetic crops have no occluders: visible = in the crop and not behind the body's surface."""
    p = people["synthetic"]
    body = body_model("cpu")
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(N, 31, 1, 4)
    out = body(torch.cat([p.pose, bottom], dim=2), p.phenotypes)

    def to_cam(points):
        return torch.einsum("bij,bnj->bni", p.rotation, points) + p.translation[:, None]

    s = I.SUPERSAMPLE  # the depth test runs on the supersampled grid the body was rendered on
    focal, center = scale_intrinsics(p.focal, p.center, s)
    frags = rasterize(to_cam(out.vertices), body.faces, focal, center, (s * S, s * S), cull_backfaces=True)
    seen = point_visibility(to_cam(out.keypoints), frags, focal, center, tolerance_m=I.VISIBILITY_TOLERANCE_M)
    expected = p.in_crop & seen
    assert (~expected).any()  # some keypoints are hidden by the body
    assert (expected != p.visible).float().mean() < 0.01


def test_synthetic_crop_frames_the_whole_body(people):
    p = people["synthetic"]
    assert p.in_crop.all()  # margin 1.15, no jitter: the mesh (hence every keypoint) is inside
    rows, cols = p.masks.any(dim=2), p.masks.any(dim=1)
    (top, bottom), (left, right) = _span(rows), _span(cols)
    height, width = bottom - top + 1, right - left + 1
    side = torch.maximum(height, width).float()
    expected = S / CROP_MARGIN["synthetic"][0]  # the larger extent of the mesh, in pixels
    assert (side > expected - 2).all() and (side < expected + 1).all(), side
    # the crop is centred on the mesh (no jitter for synthetic)
    centre_v, centre_u = (top + bottom).float() / 2, (left + right).float() / 2
    assert ((centre_v - (S - 1) / 2).abs() <= 1).all(), centre_v
    assert ((centre_u - (S - 1) / 2).abs() <= 1).all(), centre_u


@pytest.mark.parametrize("look", LOOKS)
def test_visible_keypoints_lie_on_the_silhouette(people, look):
    p = people[look]
    # At 32 px a face keypoint may sit on an anti-aliased edge pixel: allow one pixel of slack.
    grown = F.max_pool2d(p.masks[:, None].float(), 3, stride=1, padding=1)[:, 0].bool()
    assert _at_pixels(grown, p.keypoints)[p.visible].all()
    # ...and most are on the silhouette itself
    assert _at_pixels(p.masks, p.keypoints)[p.visible].float().mean() > 0.7


def test_occluders_hide_keypoints_and_only_change_the_occluded_images(train_clips, monkeypatch):
    """Realistic occluders: no visible keypoint lies under one; removing them changes nothing else."""
    real = I.L.occluders
    caught = []

    def spy(params, size):
        rgb, mask = real(params, size)
        caught.append(mask)
        return rgb, mask

    monkeypatch.setattr(I.L, "occluders", spy)
    with_occ = render_people(train_clips, 12, "realistic", S, _gen(0), "cpu")
    mask = caught[0]
    assert mask.shape == (12, S, S) and mask.any() and not mask.flatten(1).any(dim=1).all()
    under = _at_pixels(mask, with_occ.keypoints)
    assert not (with_occ.visible & under).any()
    assert (with_occ.in_crop & under).any()  # this seed does hide some keypoints

    def none(params, size):
        rgb, mask = real(params, size)
        return torch.zeros_like(rgb), torch.zeros_like(mask)

    monkeypatch.setattr(I.L, "occluders", none)
    without = render_people(train_clips, 12, "realistic", S, _gen(0), "cpu")
    for name in ("keypoints", "in_crop", "masks", "joints_cam", "pose"):  # occluders draw no random numbers
        assert torch.equal(getattr(without, name), getattr(with_occ, name)), name
    assert not (with_occ.visible & ~without.visible).any()  # occluders only remove visibility
    assert (without.visible & ~with_occ.visible).any()
    changed = (without.images != with_occ.images).flatten(1).any(dim=1)
    assert torch.equal(changed, mask.flatten(1).any(dim=1))


def test_synthetic_has_no_occluders(people):
    """Synthetic: visible == in the crop and not hidden by the body (no occluder term)."""
    p = people["synthetic"]
    assert p.visible.float().mean() > 0.6  # only self-occlusion hides keypoints
    # a self-occluded keypoint is behind the surface: the rendered body covers its pixel
    hidden = p.in_crop & ~p.visible
    grown = F.max_pool2d(p.masks[:, None].float(), 3, stride=1, padding=1)[:, 0].bool()
    assert _at_pixels(grown, p.keypoints)[hidden].all()


# --------------------------------------------------------------------------------------- cameras


def test_rotations_are_proper(people):
    for p in people.values():
        eye = torch.eye(3).expand(N, 3, 3)
        torch.testing.assert_close(p.rotation @ p.rotation.transpose(1, 2), eye, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.linalg.det(p.rotation), torch.ones(N), atol=1e-5, rtol=0)


@pytest.mark.parametrize("look", LOOKS)
def test_camera_placement_follows_the_look_ranges(people, look):
    p = people[look]
    ranges = CAMERA_RANGES[look]
    slack = 0.05 + math.sqrt(3) * ranges["target_jitter_m"]  # pelvis joint vs the root bone, aim jitter
    low, high = ranges["distance_m"]
    distance = p.joints_cam[:, PELVIS].norm(dim=-1)
    assert ((distance > low - slack) & (distance < high + slack)).all(), distance
    up = p.rotation[:, :, 2]  # world +Z in the camera frame
    # elevation: the optical axis (camera +z) points down by the elevation angle
    elevation = torch.rad2deg(torch.asin(-up[:, 2]))
    e_low, e_high = ranges["elevation_deg"]
    assert ((elevation > e_low - 1e-3) & (elevation < e_high + 1e-3)).all(), elevation
    # roll: world up points up the image (-y), turned by at most the look's roll
    roll = torch.rad2deg(torch.atan2(-up[:, 0], -up[:, 1]))
    assert (roll.abs() <= ranges["roll_deg"] + 1e-3).all(), roll


def test_synthetic_camera_convention(people):
    p = people["synthetic"]
    z = p.joints_cam[:, PELVIS, 2]
    assert ((z > 3.9) & (z < 6.1)).all(), z  # the pelvis lies on the optical axis at 4-6 m
    assert p.rotation[:, 0, 2].abs().max() < 1e-5  # roll 0: camera x is horizontal
    # head above the feet (OpenCV: v grows downwards); median over images, robust to odd poses
    ankles_v = p.joints[:, [R_ANKLE, L_ANKLE], 1].mean(dim=1)
    assert (ankles_v - p.joints[:, HEAD_TOP, 1]).median() > 0.5 * S
    # and the subject stands upright in the world: head top above the pelvis along world +Z
    world_up = p.rotation[:, :, 2]
    height = ((p.joints_cam[:, HEAD_TOP] - p.joints_cam[:, PELVIS]) * world_up).sum(dim=-1)
    assert height.median() > 0.3


# ------------------------------------------------------------------------------ render_image_set


def test_render_image_set_caches_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("POSELAB_CACHE_DIR", str(tmp_path))
    assert I.cache_dir() == tmp_path
    first = render_image_set("train", "synthetic", 3, size=S, seed=1, batch_size=2, device="cpu", progress=False)
    files = list((tmp_path / "images").glob("*.safetensors"))
    assert len(files) == 1 and not list((tmp_path / "images").glob("*.tmp"))

    def fail(*args, **kwargs):
        raise AssertionError("render_people called: the cached set was not used")

    monkeypatch.setattr(I, "render_people", fail)
    second = render_image_set("train", "synthetic", 3, size=S, seed=1, batch_size=2, device="cpu", progress=False)
    for name in PersonImages._TENSORS:
        assert torch.equal(getattr(second, name), getattr(first, name)), name
    assert (second.clip_names, second.look) == (first.clip_names, first.look)
    with pytest.raises(AssertionError, match="cached set was not used"):  # another seed is another file
        render_image_set("train", "synthetic", 3, size=S, seed=2, batch_size=2, device="cpu", progress=False)


CACHED = dict(split="train", look="realistic", count=3, size=S, seed=1, batch_size=2, device="cpu", progress=False)


def _assert_same_set(a, b):
    for name in PersonImages._TENSORS:
        got, want = getattr(a, name), getattr(b, name)
        assert got.dtype == want.dtype and torch.equal(got, want), name
    assert (a.clip_names, a.look) == (b.clip_names, b.look)


@pytest.fixture(scope="module")
def fresh_set():
    return render_image_set(**CACHED, cache=False)


def _cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("POSELAB_CACHE_DIR", str(tmp_path))
    render_image_set(**CACHED)
    (path,) = (tmp_path / "images").glob("*.safetensors")
    return path


def test_cached_set_is_bitwise_the_rendered_one(tmp_path, monkeypatch, fresh_set):
    path = _cache_file(tmp_path, monkeypatch)
    assert I.CACHE_FORMAT in path.read_bytes()[:4096].decode("latin-1")  # a safetensors file of this format
    monkeypatch.setattr(I, "render_people", lambda *a, **k: pytest.fail("the cached set was not used"))
    _assert_same_set(render_image_set(**CACHED), fresh_set)


class _Payload:
    """Unpickling this runs ``os.system("touch <marker>")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("damage", ["torch.save pickle", "plain pickle", "truncated", "empty", "other set"])
def test_a_bad_cache_file_is_never_unpickled_and_is_rendered_again(tmp_path, monkeypatch, fresh_set, damage):
    import pickle

    path = _cache_file(tmp_path, monkeypatch)
    marker = tmp_path / "marker"
    if damage == "torch.save pickle":
        torch.save({**fresh_set.to_dict(), "images": _Payload(marker)}, path)
    elif damage == "plain pickle":
        path.write_bytes(pickle.dumps({"images": _Payload(marker)}, protocol=2))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-200])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid cache file of another set under this name
        render_image_set(**{**CACHED, "seed": 2})
        (other,) = [f for f in (tmp_path / "images").glob("*.safetensors") if f != path]
        other.replace(path)
    with pytest.warns(UserWarning, match=r"image cache '.*\.safetensors' .*it is deleted and the set is rendered again"):
        again = render_image_set(**CACHED)
    assert not marker.exists()
    _assert_same_set(again, fresh_set)
    monkeypatch.setattr(I, "render_people", lambda *a, **k: pytest.fail("the rewritten cache was not used"))
    _assert_same_set(render_image_set(**CACHED), fresh_set)  # the rewritten file is good


def test_an_old_pickle_cache_is_not_read(tmp_path, monkeypatch, fresh_set):
    """Version 1 caches were pickles named ``*.pt``; version 2 has another key, so they are never opened."""
    monkeypatch.setenv("POSELAB_CACHE_DIR", str(tmp_path))
    (tmp_path / "images").mkdir()
    marker = tmp_path / "marker"
    for stale in ("train_realistic_32px_3_000000000000.pt", "train_realistic_32px_3_000000000000.safetensors"):
        torch.save({"images": _Payload(marker)}, tmp_path / "images" / stale)
    _assert_same_set(render_image_set(**CACHED), fresh_set)
    assert not marker.exists() and I.IMAGE_FORMAT_VERSION >= 2


def test_render_image_set_batches_are_independent_of_count():
    kwargs = dict(size=S, seed=3, batch_size=2, device="cpu", cache=False, progress=False)
    three = render_image_set("train", "realistic", 3, **kwargs)
    five = render_image_set("train", "realistic", 5, **kwargs)
    assert (len(three), len(five)) == (3, 5)
    for name in PersonImages._TENSORS:
        assert torch.equal(getattr(three, name)[:2], getattr(five, name)[:2]), name
    assert not torch.equal(five.images[:2], five.images[2:4])  # batches get their own seeds
    other = render_image_set("train", "realistic", 3, **{**kwargs, "seed": 4})
    assert not torch.equal(other.images, three.images)


def test_render_image_set_test_split_uses_held_out_subjects():
    p = render_image_set("test", "synthetic", 4, size=16, seed=0, device="cpu", cache=False, progress=False)
    assert set(p.subject.tolist()) <= set(SPLIT_SUBJECTS["test_in"])
    assert p.size == 16 and p.look == "synthetic"


def test_split_clips_separates_subjects():
    train, test = image_split_clips("train"), image_split_clips("test")
    assert train and test
    assert {c.subject for c in test} == {2, 124} == set(SPLIT_SUBJECTS["test_in"])
    assert not {c.subject for c in train} & {c.subject for c in test}
    assert not {c.name for c in train} & {c.name for c in test}
    assert all(c.proportions not in EXCLUDED_PROPORTIONS for c in train + test)
    assert set(IMAGE_SPLITS) == {"train", "test"}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(look="cartoon"), ValueError, "unknown look 'cartoon'"),
        (dict(split="val"), ValueError, "unknown split 'val'"),
        (dict(size=8), ValueError, "size: expected an int >= 16"),
        (dict(size=32.0), TypeError, "size: expected an int"),
        (dict(count=0), ValueError, "count: expected an int >= 1"),
        (dict(batch_size=0), ValueError, "batch_size: expected an int >= 1"),
        (dict(seed="1"), TypeError, "seed: expected an int"),
        (dict(seed=1.0), TypeError, "seed: expected an int"),
        (dict(seed=True), TypeError, "seed: expected an int"),
    ],
)
def test_render_image_set_rejects_bad_arguments(kwargs, error, match):
    args = dict(split="train", look="synthetic", count=2, size=S, seed=0, cache=False, progress=False, device="cpu")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        render_image_set(**args)


def test_render_people_rejects_bad_arguments(train_clips):
    with pytest.raises(ValueError, match="clips: expected at least one clip"):
        render_people([], 2, "synthetic", S, _gen(), "cpu")
    with pytest.raises(ValueError, match="unknown look"):
        render_people(train_clips, 2, "cartoon", S, _gen(), "cpu")
    with pytest.raises(ValueError, match="count: expected an int >= 1"):
        render_people(train_clips, 0, "synthetic", S, _gen(), "cpu")
    with pytest.raises(ValueError, match="size: expected an int >= 16"):
        render_people(train_clips, 2, "synthetic", 15, _gen(), "cpu")
    with pytest.raises(TypeError, match="generator"):
        render_people(train_clips, 2, "synthetic", S, None, "cpu")


# ---------------------------------------------------------------------------------- PersonImages


def test_person_images_subset_float_images_and_repr(people):
    p = people["synthetic"]
    for index in (slice(1, 4), torch.tensor([4, 0, 2]), torch.tensor([True, False, True, False, False, True])):
        sub = p.subset(index)
        assert isinstance(sub, PersonImages) and sub.look == p.look and sub.clip_names == p.clip_names
        for name in PersonImages._TENSORS:
            assert torch.equal(getattr(sub, name), getattr(p, name)[index]), name
    assert len(p.subset(torch.tensor([3]))) == 1
    x = p.float_images("cpu")
    assert x.dtype == torch.float32 and x.shape == (N, 3, S, S)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    torch.testing.assert_close(x * 255, p.images.float())
    assert p.images.dtype == torch.uint8  # float_images does not change the stored images
    text = repr(p)
    assert "look='synthetic'" in text and f"n={N}" in text and f"size={S}" in text


def test_person_images_validates_its_fields(people):
    fields = people["synthetic"].to_dict()
    with pytest.raises(ValueError, match="unknown look"):
        PersonImages(**{**fields, "look": "cartoon"})
    with pytest.raises(ValueError, match="images: expected uint8"):
        PersonImages(**{**fields, "images": fields["images"].float()})
    with pytest.raises(ValueError, match=f"PersonImages.keypoints: expected a tensor with {N} rows"):
        PersonImages(**{**fields, "keypoints": fields["keypoints"][:2]})
    assert torch.equal(PersonImages(**fields).images, fields["images"])


# ------------------------------------------------------------------------------------------ CUDA


@pytest.mark.parametrize(
    "device", [pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]
)
def test_render_on_gpu_matches_cpu(people, train_clips, device):
    """One code path: the same generator gives the same crops on the GPU, up to float rounding."""
    for look in LOOKS:
        cpu = people[look]
        gpu = render_people(train_clips, N, look, S, _gen(0), device)
        for name in PersonImages._TENSORS:
            assert getattr(gpu, name).device.type == "cpu", name
        for name in ("subject", "clip", "frame"):
            assert torch.equal(getattr(gpu, name), getattr(cpu, name)), name
        for name in ("keypoints", "joints"):
            torch.testing.assert_close(getattr(gpu, name), getattr(cpu, name), atol=1e-2, rtol=0)
        torch.testing.assert_close(gpu.joints_cam, cpu.joints_cam, atol=1e-4, rtol=0)
        assert (gpu.masks != cpu.masks).float().mean() < 0.01
        assert (gpu.images.float() - cpu.images.float()).abs().mean() < 2.0
        assert (gpu.visible != cpu.visible).float().mean() < 0.05
    cached = render_image_set("train", "synthetic", 2, size=S, device=device, cache=False, progress=False)
    assert cached.images.device.type == "cpu" and len(cached) == 2
