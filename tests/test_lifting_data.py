"""Tests for poselab.data.lifting: DAR, LiftingSet, and the subject splits built from the mocap clips."""

import math

import pytest
import torch

from poselab.data import lifting as L
from poselab.data import mocap
from poselab.data.cameras import make_rig, pixels_to_normalized
from poselab.data.lifting import (
    DOMAINS,
    EXCLUDED_PROPORTIONS,
    PROFILE_FRAME_STRIDE,
    SPLIT_SUBJECTS,
    LiftingSet,
    build_lifting_splits,
    center_poses,
    clear_lifting_cache,
    depth_ambiguity_ratio,
    excluded_clips,
    make_lifting_set,
    clips_by_split,
)

STANDING = torch.tensor(
    [
        [0.00, 0.95, 0.00], [-0.12, 0.93, 0.00], [-0.13, 0.50, 0.02], [-0.14, 0.08, 0.00],
        [0.12, 0.93, 0.00], [0.13, 0.50, 0.02], [0.14, 0.08, 0.00], [0.00, 1.20, 0.00],
        [0.00, 1.45, 0.00], [0.00, 1.58, 0.05], [0.00, 1.78, 0.00], [0.19, 1.43, 0.00],
        [0.22, 1.15, 0.00], [0.24, 0.90, 0.05], [-0.19, 1.43, 0.00], [-0.22, 1.15, 0.00],
        [-0.24, 0.90, 0.05],
    ]
)  # H36M17 order, metres, world frame, facing +Z


def _rot(axis, angle):
    c, s = math.cos(angle), math.sin(angle)
    if axis == "y":
        return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# --- depth ambiguity ratio ------------------------------------------------------------------


def test_dar_known_answer():
    # var x = 0.5, var y = 0, var z = 0.5  ->  sqrt(0.5) / sqrt((0.5 + 0) / 2) = sqrt(2)
    pose = torch.tensor([[[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]])
    assert depth_ambiguity_ratio(pose).item() == pytest.approx(math.sqrt(2))


def test_dar_flat_pose_is_zero_and_stretched_pose_is_high():
    g = torch.Generator().manual_seed(0)
    flat = torch.randn(5, 17, 3, generator=g)
    flat[..., 2] = 4.0  # every joint at the same depth
    assert torch.allclose(depth_ambiguity_ratio(flat), torch.zeros(5))
    stretched = torch.randn(5, 17, 3, generator=g) * torch.tensor([0.05, 0.05, 1.0])
    assert (depth_ambiguity_ratio(stretched) > 5).all()
    iso = torch.randn(1, 20000, 3, generator=g)
    assert depth_ambiguity_ratio(iso).item() == pytest.approx(1.0, abs=0.03)


def test_dar_invariances():
    g = torch.Generator().manual_seed(1)
    pose = torch.randn(4, 17, 3, generator=g)
    dar = depth_ambiguity_ratio(pose)
    assert torch.allclose(depth_ambiguity_ratio(pose * 3.7), dar, atol=1e-5)  # scale
    assert torch.allclose(depth_ambiguity_ratio(pose + torch.tensor([1.0, -2.0, 5.0])), dar, atol=1e-5)  # translation
    rolled = pose @ _rot("z", 0.8).T  # rotation about the optical axis
    assert torch.allclose(depth_ambiguity_ratio(rolled), dar, atol=1e-5)
    root_relative = pose - pose[:, :1]
    assert torch.allclose(depth_ambiguity_ratio(root_relative), dar, atol=1e-5)
    # not invariant to the viewing direction: a pose flat in x-y turned 90 deg about y is flat in y-z
    flat = pose.clone()
    flat[..., 2] = 0
    turned = flat @ _rot("y", math.pi / 2).T
    assert (depth_ambiguity_ratio(turned) > 1.0).all() and (depth_ambiguity_ratio(flat) < 1e-6).all()


def test_dar_bad_input():
    with pytest.raises(ValueError, match="pose_cam"):
        depth_ambiguity_ratio(torch.zeros(17, 3))
    with pytest.raises(ValueError, match="pose_cam"):
        depth_ambiguity_ratio(torch.zeros(2, 17, 2))
    with pytest.raises(TypeError, match="pose_cam"):
        depth_ambiguity_ratio(torch.zeros(2, 17, 3, dtype=torch.int64))


# --- centring and LiftingSet from synthetic poses -----------------------------------------


def test_center_poses_keeps_height_and_shape():
    poses = STANDING + torch.tensor([[[12.0, 0.3, -7.0]]])
    out = center_poses(poses)
    assert torch.allclose(out[:, 0, [0, 2]], torch.zeros(1, 2))
    assert out[0, 0, 1].item() == pytest.approx(1.25)
    assert torch.allclose(out - out[:, :1], poses - poses[:, :1])


def _synthetic(T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    poses = STANDING + 0.05 * torch.randn(T, 17, 3, generator=g)
    subject = torch.tensor([3, 3, 3, 7, 7, 7])[:T]
    clip = torch.tensor([0, 0, 0, 1, 1, 1])[:T]
    return center_poses(poses), subject, clip, torch.arange(T)


def test_make_lifting_set_studio_known_values():
    poses, subject, clip, frame = _synthetic()
    rig = make_rig("studio")
    ds = make_lifting_set(poses, rig, "train", subject, clip, frame, clips=("a", "b"))
    assert len(ds) == 6 * 4 and ds.num_joints == 17
    assert ds.inputs.shape == (24, 17, 2) and ds.inputs.dtype == torch.float32
    assert ds.targets.shape == (24, 17, 3) and ds.targets.dtype == torch.float32
    for name in ("subject", "clip", "camera", "frame"):
        assert getattr(ds, name).dtype == torch.int64
    assert ds.camera.tolist() == [0, 1, 2, 3] * 6  # pose-major order
    assert ds.subject.tolist() == [3] * 12 + [7] * 12
    assert ds.clip_names[-1] == "b"
    # sample 4 * 2 + 1 = pose 2 seen by camera 1
    p = poses[2].double()
    cam = p @ rig.R[1].double().T + rig.t[1].double()
    assert torch.allclose(ds.targets[9].double(), cam - cam[0], atol=1e-5)
    px = rig.focal[1].double() * cam[:, :2] / cam[:, 2:] + rig.center[1].double()
    assert torch.allclose(ds.inputs[9].double(), pixels_to_normalized(px, rig.size[1].double()), atol=1e-6)
    assert torch.allclose(ds.targets[:, 0], torch.zeros(24, 3))
    assert torch.allclose(ds.dar, depth_ambiguity_ratio(ds.targets), atol=1e-5)
    # back to pixels through the dataset's cameras
    assert torch.allclose(ds.pixels()[9].double(), px, atol=1e-3)


def test_make_lifting_set_paired_wild():
    poses, subject, clip, frame = _synthetic()
    cams = make_rig("wild", num_cameras=6, generator=torch.Generator().manual_seed(0))
    ds = make_lifting_set(poses, cams, "test_cross", subject, clip, frame, paired=True)
    assert len(ds) == 6 and ds.camera.tolist() == list(range(6))
    expected = pixels_to_normalized(cams.project_paired(poses), cams.size[:, None])
    assert torch.allclose(ds.inputs, expected, atol=1e-5)
    with pytest.raises(ValueError, match="points"):
        make_lifting_set(poses[:5], cams, "test_cross", subject[:5], clip[:5], paired=True)


def test_make_lifting_set_rejects_points_behind_camera():
    poses, subject, clip, frame = _synthetic()
    with pytest.raises(ValueError, match="behind"):
        make_lifting_set(poses + torch.tensor([0.0, 0.0, 10.0]), make_rig("studio"), "train", subject, clip)


def test_lifting_set_indexing_subset_and_loader():
    poses, subject, clip, frame = _synthetic()
    ds = make_lifting_set(poses, make_rig("studio"), "test_in", subject, clip, frame, clips=("a", "b"))
    x, y = ds[5]
    assert x.shape == (17, 2) and y.shape == (17, 3)
    sub = ds.subset(ds.subject == 7)
    assert len(sub) == 12 and set(sub.subject.tolist()) == {7} and sub.domain == "test_in"
    idx = ds.subset([0, 5, 7])
    assert torch.equal(idx.inputs, ds.inputs[[0, 5, 7]]) and idx.camera.tolist() == [0, 1, 3]
    assert len(ds.to("cpu")) == len(ds)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert batch[0].shape == (8, 17, 2) and batch[1].shape == (8, 17, 3)
    with pytest.raises(ValueError, match="mask"):
        ds.subset(torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="index"):
        ds.subset(torch.tensor([0.5]))


def test_lifting_set_with_noise_is_in_pixels():
    poses, subject, clip, frame = _synthetic()
    ds = make_lifting_set(poses, make_rig("studio"), "train", subject, clip, frame)
    assert torch.allclose(ds.with_noise(0.0).inputs, ds.inputs, atol=1e-6)
    big = make_lifting_set(poses.repeat(50, 1, 1), make_rig("studio"), "train", subject.repeat(50), clip.repeat(50))
    noisy = big.with_noise(4.0, torch.Generator().manual_seed(0))
    diff_px = noisy.pixels() - big.pixels()
    assert diff_px.std().item() == pytest.approx(4.0, rel=0.05)


def test_lifting_set_bad_input():
    poses, subject, clip, frame = _synthetic()
    good = make_lifting_set(poses, make_rig("studio"), "train", subject, clip, frame)
    fields = dict(inputs=good.inputs, targets=good.targets, subject=good.subject, clip=good.clip, camera=good.camera, dar=good.dar)
    with pytest.raises(ValueError, match="'train', 'test_in', 'test_cross'"):
        LiftingSet(**fields, domain="val")
    with pytest.raises(ValueError, match="targets"):
        LiftingSet(**(fields | dict(targets=good.targets[:, :16])), domain="train")
    with pytest.raises(ValueError, match="dar"):
        LiftingSet(**(fields | dict(dar=good.dar[:3])), domain="train")
    with pytest.raises(TypeError, match="subject"):
        LiftingSet(**(fields | dict(subject=good.subject.float())), domain="train")


# --- the real splits (fast profile) -----------------------------------------------------------


@pytest.fixture(scope="module")
def splits():
    return build_lifting_splits("fast", seed=0)


def test_split_definition_by_subject():
    clips = clips_by_split()
    assert set(clips) == set(DOMAINS)
    info = {c.name: c for c in mocap.clip_index()}
    subjects = {d: {info[n].subject for n in names} for d, names in clips.items()}
    assert subjects["test_in"] == set(SPLIT_SUBJECTS["test_in"]) == {2, 124}
    assert subjects["test_cross"] == set(SPLIT_SUBJECTS["test_cross"]) == {1, 5}
    assert not subjects["train"] & (subjects["test_in"] | subjects["test_cross"])
    all_named = [n for names in clips.values() for n in names]
    assert len(all_named) == len(set(all_named))  # no clip in two splits
    excluded = excluded_clips()
    assert sorted(excluded) == ["05_01", "08_02", "09_11", "49_08", "55_01"]
    assert "short torso" in excluded["08_02"] and "walk" in excluded["05_01"]
    assert sorted(all_named + list(excluded)) == sorted(info)  # every clip accounted for
    assert all(info[n].proportions not in EXCLUDED_PROPORTIONS for n in all_named)
    # the cross-domain activities appear nowhere in training
    train_activities = {info[n].activity for n in clips["train"]}
    assert not {info[n].activity for n in clips["test_cross"]} & train_activities
    assert {info[n].activity for n in clips["test_cross"]} == {"playground", "dance"}


def test_splits_share_no_subject_or_clip(splits):
    assert set(splits) == {"train", "test_in", "test_cross"}
    seen_subjects, seen_clips = set(), set()
    for domain, ds in splits.items():
        assert ds.domain == domain
        subj = set(ds.subject.tolist())
        names = set(ds.clip_names)
        assert not subj & seen_subjects and not names & seen_clips
        seen_subjects |= subj
        seen_clips |= names
    assert set(splits["test_cross"].subject.tolist()) == {1, 5}
    assert set(splits["test_in"].subject.tolist()) == {2, 124}


def test_split_sizes_follow_stride(splits):
    info = {c.name: c for c in mocap.clip_index()}
    stride = PROFILE_FRAME_STRIDE["fast"]
    for domain, names in clips_by_split().items():
        frames = sum(math.ceil(info[n].frames / stride) for n in names)
        assert len(splits[domain]) == 4 * frames  # 4 studio views, or 4 wild cameras per frame
    assert 3000 < sum(len(ds) for ds in splits.values()) < 8000
    frames = splits["train"].frame
    assert (frames % stride == 0).all()


def test_cameras_per_domain(splits):
    for domain in ("train", "test_in"):
        ds = splits[domain]
        assert len(ds.cameras) == 4 and torch.allclose(ds.cameras.size, torch.full((4, 2), 1000.0))
    cross = splits["test_cross"]
    assert len(cross.cameras) == len(cross)  # one wild camera per sample
    assert len(set(cross.camera.tolist())) == len(cross)
    assert len({tuple(s) for s in cross.cameras.size.tolist()}) > 1
    assert cross.cameras.focal.std() > 50


def test_split_tensors_are_sane(splits):
    for ds in splits.values():
        assert ds.inputs.dtype == torch.float32 and ds.targets.dtype == torch.float32
        assert torch.isfinite(ds.inputs).all() and torch.isfinite(ds.targets).all() and torch.isfinite(ds.dar).all()
        assert torch.equal(ds.targets[:, 0], torch.zeros_like(ds.targets[:, 0]))  # root-relative
        assert ds.targets.abs().max() < 2.5  # metres: a body, not a wandering trajectory
        size = ds.image_size()
        aspect = (size[:, 1] / size[:, 0])[:, None]
        inside = (ds.inputs[..., 0].abs() <= 1) & (ds.inputs[..., 1].abs() <= aspect)
        assert inside.float().mean() > 0.99
        # bone lengths do not depend on the camera (targets are a rigid transform of the pose)
        thigh = (ds.targets[:, 2] - ds.targets[:, 1]).norm(dim=-1)
        assert ((thigh > 0.3) & (thigh < 0.5)).all()


def test_splits_deterministic_and_cached(splits):
    again = build_lifting_splits("fast", seed=0)
    assert again["train"] is splits["train"] and again is not splits  # cached sets, fresh dict
    clear_lifting_cache()
    rebuilt = build_lifting_splits("fast", seed=0)
    assert rebuilt["train"] is not splits["train"]
    for d in DOMAINS:
        assert torch.equal(rebuilt[d].inputs, splits[d].inputs) and torch.equal(rebuilt[d].targets, splits[d].targets)
    other = build_lifting_splits("fast", seed=1)
    assert torch.equal(other["train"].inputs, splits["train"].inputs)  # studio rig is fixed
    assert not torch.equal(other["test_cross"].inputs, splits["test_cross"].inputs)  # wild cameras differ


def test_train_noise_only_touches_train(splits):
    noisy = build_lifting_splits("fast", seed=0, frame_stride=12, train_noise=2.0)
    assert not torch.equal(noisy["train"].inputs, splits["train"].inputs)
    assert torch.equal(noisy["train"].targets, splits["train"].targets)
    assert torch.equal(noisy["test_cross"].inputs, splits["test_cross"].inputs)
    diff_px = noisy["train"].pixels() - splits["train"].pixels()
    assert diff_px.std().item() == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(profile="huge"), ValueError, "'fast', 'book', 'full'"),
        (dict(frame_stride=0), ValueError, "frame_stride"),
        (dict(train_noise=-1.0), ValueError, "train_noise"),
        (dict(cross_views=0), ValueError, "cross_views"),
        (dict(seed=1.5), TypeError, "seed"),
    ],
)
def test_build_lifting_splits_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_lifting_splits(**kwargs)


# --- the cmu31 layout ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cmu_splits():
    return build_lifting_splits("fast", seed=0, layout="cmu31")


def test_cmu31_layout_shapes_match_h36m17_splits(splits, cmu_splits):
    assert set(cmu_splits) == set(splits)
    for domain, ds in cmu_splits.items():
        n = len(splits[domain])
        assert ds.inputs.shape == (n, 31, 2) and ds.targets.shape == (n, 31, 3)
        assert ds.inputs.dtype == torch.float32 and ds.targets.dtype == torch.float32
        assert torch.isfinite(ds.inputs).all() and torch.isfinite(ds.targets).all()
        # the same samples: same subjects, clips, frames and cameras, in the same order
        for field in ("subject", "clip", "frame", "camera"):
            assert torch.equal(getattr(ds, field), getattr(splits[domain], field)), field


def test_cmu31_joints_shared_with_h36m17_agree(splits, cmu_splits):
    from poselab.data.skeleton import CMU_TO_H36M, H36M17

    shared = [(h, c) for h, c in enumerate(CMU_TO_H36M) if c < 31]  # all but the head top (End Site)
    assert len(shared) == 16 and H36M17.joint_names[10] == "Head" and 10 not in dict(shared)
    h36m, cmu = torch.tensor([h for h, _ in shared]), torch.tensor([c for _, c in shared])
    for domain, ds in cmu_splits.items():
        ref = splits[domain]
        torch.testing.assert_close(ds.targets[:, cmu], ref.targets[:, h36m], rtol=0, atol=1e-6)
        torch.testing.assert_close(ds.inputs[:, cmu], ref.inputs[:, h36m], rtol=0, atol=1e-6)


def test_cmu31_root_is_zero_and_zero_length_joints_sit_on_it(cmu_splits):
    from poselab.data.skeleton import CMU31, ZERO_LENGTH_JOINTS

    on_root = [CMU31.index(n) for n in ZERO_LENGTH_JOINTS["cmu31"]]
    assert sorted(on_root) == [1, 6, 11]
    for ds in cmu_splits.values():
        assert torch.equal(ds.targets[:, 0], torch.zeros_like(ds.targets[:, 0]))  # root-relative, pelvis = joint 0
        assert ds.targets[:, on_root].abs().max() < 1e-6
        assert torch.allclose(ds.inputs[:, on_root], ds.inputs[:, :1].expand(-1, 3, -1), atol=1e-6)
        others = [j for j in range(1, 31) if j not in on_root]
        assert (ds.targets[:, others].norm(dim=-1) > 1e-3).all()  # every other joint is off the root


def test_unknown_layout_raises_naming_the_choices():
    with pytest.raises(ValueError, match=r"layout.*'h36m17', 'cmu31'"):
        build_lifting_splits("fast", layout="h36m32")


@pytest.fixture(scope="module")
def fast_train():
    return build_lifting_splits("fast")["train"]


def test_dar_groups_partition_the_samples_in_increasing_dar():
    class Fake:
        dar = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2], dtype=torch.float64)

    groups = L.dar_groups(Fake(), 3)
    assert sorted(torch.cat(groups).tolist()) == list(range(6))
    assert [Fake.dar[g].tolist() for g in groups] == [[0.1, 0.2], [0.3, 0.5], [0.7, 0.9]]
    with pytest.raises(ValueError, match="groups: expected an int >= 2"):
        L.dar_groups(Fake(), 1)


def test_fixed_subset_is_seeded_sorted_and_bounded(fast_train):
    a, b = L.fixed_subset(fast_train, 50, seed=3), L.fixed_subset(fast_train, 50, seed=3)
    assert len(a) == 50 and torch.equal(a.inputs, b.inputs)
    assert not torch.equal(a.inputs, L.fixed_subset(fast_train, 50, seed=4).inputs)
    assert L.fixed_subset(fast_train, 10 ** 9, seed=0) is fast_train
    with pytest.raises(ValueError, match="size: expected an int >= 1"):
        L.fixed_subset(fast_train, 0, seed=0)


def test_dar_thirds_are_the_extreme_thirds(fast_train):
    thirds = L.dar_thirds(fast_train)
    assert abs(len(thirds["low_dar"]) - len(fast_train) / 3) <= 1
    assert float(thirds["low_dar"].dar.max()) <= float(thirds["high_dar"].dar.min())


def test_mean_image_extent_known_answer(fast_train):
    data = fast_train.subset(torch.arange(2))
    data.inputs[:] = 0.0
    data.inputs[0, 1] = torch.tensor([0.5, 0.2])  # extent 0.5
    data.inputs[1, 1] = torch.tensor([0.1, -0.3])  # extent 0.3
    assert L.mean_image_extent(data) == pytest.approx(0.4)
