import csv
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from poselab.data import mocap
from poselab.data.mocap import (
    BVH_UNIT_METRES,
    BVHError,
    clip_index,
    forward_kinematics,
    load_bvh,
    load_clip,
    motion_end_sites,
    motion_joints,
    motion_to_h36m,
)
from poselab.data.skeleton import CMU31, H36M17

U = BVH_UNIT_METRES

# Root R (6 channels) -> A (offset +X) -> B (offset 2 along +Y), End Site 3 along +Z; 12 channels per frame.
TINY = """HIERARCHY
ROOT R
{
\tOFFSET 0 0 0
\tCHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation
\tJOINT A
\t{
\t\tOFFSET 1 0 0
\t\tCHANNELS 3 Zrotation Yrotation Xrotation
\t\tJOINT B
\t\t{
\t\t\tOFFSET 0 2 0
\t\t\tCHANNELS 3 Zrotation Yrotation Xrotation
\t\t\tEnd Site
\t\t\t{
\t\t\t\tOFFSET 0 0 3
\t\t\t}
\t\t}
\t}
}
MOTION
Frames: 3
Frame Time: 0.04
10 20 30 90 0 0 0 0 90 0 0 0
0 0 0 0 0 0 90 90 0 0 0 0
0 0 0 0 0 0 0 0 0 0 0 0
"""


def _write(tmp_path: Path, text: str, name: str = "clip.bvh") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------ known answers


def test_tiny_bvh_hand_computed_fk(tmp_path):
    m = load_bvh(_write(tmp_path, TINY, "tiny.bvh"))
    assert m.name == "tiny" and m.joint_names == ("R", "A", "B") and m.parents == (-1, 0, 1)
    assert m.num_frames == 3 and m.fps == 25.0
    assert m.offsets.dtype == torch.float32 and m.local_rotations.shape == (3, 3, 3, 3)
    torch.testing.assert_close(m.offsets, torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 2, 0]]) * U)
    assert list(m.end_sites) == [2]
    torch.testing.assert_close(m.end_sites[2], torch.tensor([0.0, 0, 3]) * U)

    joints, ends = motion_end_sites(m)
    # Frame 0: root at (10,20,30) turned +90 deg about Z (x -> y); A turned +90 deg about X (y -> z).
    #   A = root + Rz (1,0,0) = (10,21,30);  B = A + Rz Rx (0,2,0) = A + (0,0,2);  end = B + Rz Rx (0,0,3) = B + (3,0,0)
    # Frame 1: A has Z=90, Y=90, so R_A = Rz(90) Ry(90): (0,2,0) -> (-2,0,0) and (0,0,3) -> (0,3,0).
    #   (The other order, Ry Rz, would send (0,2,0) to (0,0,2).)
    # Frame 2: rest pose = cumulative offsets.
    expected = torch.tensor(
        [
            [[10, 20, 30], [10, 21, 30], [10, 21, 32]],
            [[0, 0, 0], [1, 0, 0], [-1, 0, 0]],
            [[0, 0, 0], [1, 0, 0], [1, 2, 0]],
        ],
        dtype=torch.float32,
    )
    expected_end = torch.tensor([[13, 21, 32], [-1, 3, 0], [1, 2, 3]], dtype=torch.float32)
    torch.testing.assert_close(joints, expected * U, atol=1e-6, rtol=0)
    torch.testing.assert_close(ends[2], expected_end * U, atol=1e-6, rtol=0)
    torch.testing.assert_close(motion_joints(m), joints)


def _rot(axis: str, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return {
        "X": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "Y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "Z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]



# Joints below the root with position channels, interleaved with the rotations in a non-standard order.
# A: 6 channels "Zrotation Xposition Yrotation Yposition Zposition Xrotation" (rotation order Z, Y, X);
# B: only Yposition (its OFFSET x and z stay). 6 + 6 + 4 = 16 values per frame.
TRANSLATED = """HIERARCHY
ROOT R
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation
  JOINT A
  {
    OFFSET 1 0 0
    CHANNELS 6 Zrotation Xposition Yrotation Yposition Zposition Xrotation
    JOINT B
    {
      OFFSET 0.25 2 -0.5
      CHANNELS 4 Yposition Zrotation Yrotation Xrotation
      End Site
      {
        OFFSET 0 0 3
      }
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.04
1 2 3 30 -20 10 40 0.5 25 1.5 -0.7 -35 2.5 15 -60 20
4 5 6 0 0 0 0 2 0 -1 0.5 0 3 0 0 0
"""


def test_position_channels_below_root_fk_independent(tmp_path):
    m = load_bvh(_write(tmp_path, TRANSLATED, "translated.bvh"))
    assert m.joint_names == ("R", "A", "B") and m.num_frames == 2
    torch.testing.assert_close(m.offsets, torch.tensor([[0, 0, 0], [1, 0, 0], [0.25, 2, -0.5]]) * U)
    # Per-frame local translations: A's three channels replace its OFFSET, B's Yposition replaces y only.
    t_a = np.array([[0.5, 1.5, -0.7], [2, -1, 0.5]])
    t_b = np.array([[0.25, 2.5, -0.5], [0.25, 3, -0.5]])
    root = np.array([[1.0, 2, 3], [4, 5, 6]])
    assert m.local_offsets.shape == (2, 3, 3) and m.local_offsets.dtype == torch.float32
    torch.testing.assert_close(m.local_offsets[:, 0], m.root_positions)
    np.testing.assert_allclose(m.local_offsets[:, 1].double().numpy(), t_a * U, rtol=1e-6)
    np.testing.assert_allclose(m.local_offsets[:, 2].double().numpy(), t_b * U, rtol=1e-6)

    # Frame 1 has no rotations: the joints are cumulative translations, by hand.
    joints, ends = motion_end_sites(m)
    hand = np.array([[4, 5, 6], [6, 4, 6.5], [6.25, 7, 6]]) * U
    np.testing.assert_allclose(joints[1].double().numpy(), hand, atol=1e-6)
    np.testing.assert_allclose(ends[2][1].double().numpy(), np.array([6.25, 7, 9]) * U, atol=1e-6)

    # Frame 0 with explicit rotation matrices, in float64, independent of poselab and bvhio.
    r_root = _rot("Z", 30) @ _rot("Y", -20) @ _rot("X", 10)
    r_a = _rot("Z", 40) @ _rot("Y", 25) @ _rot("X", -35)  # rotation channels in file order: Z, Y, X
    r_b = _rot("Z", 15) @ _rot("Y", -60) @ _rot("X", 20)
    p_a = root[0] + r_root @ t_a[0]
    p_b = p_a + r_root @ r_a @ t_b[0]
    end = p_b + r_root @ r_a @ r_b @ np.array([0, 0, 3.0])
    expected = np.stack([root[0], p_a, p_b]) * U
    np.testing.assert_allclose(joints[0].double().numpy(), expected, atol=2e-6)
    np.testing.assert_allclose(ends[2][0].double().numpy(), end * U, atol=2e-6)
    torch.testing.assert_close(motion_joints(m), joints)
    # The test tells the answers apart: using the static OFFSETs, or the reversed rotation order, is far off.
    static = forward_kinematics(m.root_positions, m.local_rotations, m.offsets, m.parents)
    assert (static[0] - joints[0]).norm(dim=-1).max() > 0.05
    wrong = p_a + r_root @ (_rot("X", -35) @ _rot("Y", 25) @ _rot("Z", 40)) @ t_b[0]
    assert np.abs(wrong - p_b).max() * U > 0.01


def test_static_offsets_when_only_the_root_has_positions(tmp_path):
    assert load_bvh(_write(tmp_path, TINY)).local_offsets is None
    assert load_clip("02_03").local_offsets is None


def test_fk_per_frame_offsets_match_static_offsets():
    m = load_clip("02_03")
    root, rot = m.root_positions[:6].reshape(2, 3, 3), m.local_rotations[:6].reshape(2, 3, 31, 3, 3)
    static = forward_kinematics(root, rot, m.offsets, m.parents)
    per_frame = forward_kinematics(root, rot, m.offsets.expand(2, 3, 31, 3), m.parents)
    torch.testing.assert_close(per_frame, static, atol=1e-6, rtol=0)


def test_motion_local_offsets_shape_checked_and_cloned(tmp_path):
    m = load_bvh(_write(tmp_path, TRANSLATED, "translated.bvh"))
    with pytest.raises(ValueError,
                       match=r"local_offsets: expected None or a tensor of shape \(T, J, 3\) = \(1, 3, 3\)"):
        replace(m, root_positions=m.root_positions[:1], local_rotations=m.local_rotations[:1])
    one = replace(m, root_positions=m.root_positions[:1], local_rotations=m.local_rotations[:1],
                  local_offsets=m.local_offsets[:1])
    torch.testing.assert_close(motion_joints(one)[0], motion_joints(m)[0])
    copy = m.clone()
    copy.local_offsets.zero_()
    assert m.local_offsets.abs().sum() > 0

def test_rotation_convention_matches_raw_channels():
    """local_rotations[t, j] == Rz(z) Ry(y) Rx(x) built from the raw numbers of a MOTION line."""
    name, frame = "05_02", 37
    lines = (mocap.mocap_dir() / f"{name}.bvh").read_text().splitlines()
    start = lines.index("MOTION") + 3  # MOTION, Frames:, Frame Time:
    assert lines[start - 2].startswith("Frames:")
    values = np.array(lines[start + frame].split(), dtype=np.float64)
    assert values.shape == (6 + 3 * 30,)
    zyx = np.concatenate([values[3:6], values[6:]]).reshape(31, 3)  # every joint: Zrotation Yrotation Xrotation

    m = load_clip(name)
    got = m.local_rotations[frame].double().numpy()
    expected = np.stack([_rot("Z", z) @ _rot("Y", y) @ _rot("X", x) for z, y, x in zyx])
    np.testing.assert_allclose(got, expected, atol=2e-6)
    np.testing.assert_allclose(m.root_positions[frame].double().numpy(), values[:3] * U, rtol=1e-6)
    # The test can tell orders apart: the reversed product is clearly different on this frame.
    reversed_order = np.stack([_rot("X", x) @ _rot("Y", y) @ _rot("Z", z) for z, y, x in zyx])
    assert np.abs(got - reversed_order).max() > 0.1


def test_rest_pose_fk_is_cumulative_offsets():
    m = load_clip("02_01")
    T, J = 4, m.num_joints
    rest = forward_kinematics(
        torch.zeros(T, 3), torch.eye(3).expand(T, J, 3, 3).clone(), m.offsets, m.parents
    )
    expected = [torch.zeros(3)]
    for j in range(1, J):
        expected.append(expected[m.parents[j]] + m.offsets[j])
    torch.testing.assert_close(rest, torch.stack(expected).expand(T, J, 3), atol=1e-6, rtol=0)
    # the legs point down and outwards, the head up (ASF zero pose); left joints on +X
    assert rest[0, CMU31.index("LeftFoot"), 1] < -0.7 and rest[0, CMU31.index("Head"), 1] > 0.5
    assert rest[0, CMU31.index("LeftHand"), 0] > 0.5 > -0.5 > rest[0, CMU31.index("RightHand"), 0]


def test_fk_root_is_root_position_and_rigid_motion_equivariant():
    m = load_clip("07_03")
    joints = motion_joints(m)
    torch.testing.assert_close(joints[:, 0], m.root_positions)
    # Rotating the root rotation by Q and moving the root by d moves every joint by the same rigid motion.
    q = torch.tensor(_rot("Y", 30) @ _rot("X", -20), dtype=torch.float32)
    d = torch.tensor([1.0, -2.0, 0.5])
    rotations = m.local_rotations.clone()
    rotations[:, 0] = q @ rotations[:, 0]
    moved = forward_kinematics(m.root_positions @ q.T + d, rotations, m.offsets, m.parents)
    torch.testing.assert_close(moved, joints @ q.T + d, atol=2e-5, rtol=0)


def test_fk_broadcasts_over_leading_dims_and_returns_rotations():
    m = load_clip("02_03")
    rot = m.local_rotations[:6].reshape(2, 3, 31, 3, 3)
    root = m.root_positions[:6].reshape(2, 3, 3)
    pos, world = forward_kinematics(root, rot, m.offsets, m.parents, return_rotations=True)
    assert pos.shape == (2, 3, 31, 3) and world.shape == (2, 3, 31, 3, 3)
    torch.testing.assert_close(pos.reshape(6, 31, 3), motion_joints(m)[:6])
    # world rotations are rotations
    eye = torch.eye(3).expand_as(world)
    torch.testing.assert_close(world @ world.transpose(-1, -2), eye, atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fk_follows_input_device():
    m = load_clip("02_03")
    out = forward_kinematics(m.root_positions.cuda(), m.local_rotations.cuda(), m.offsets.cuda(), m.parents)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), motion_joints(m), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ the real clips


@pytest.fixture(scope="module")
def all_clips():
    """Every clip in the index, loaded once (about 2-5 s on 2 CPU cores)."""
    return {info.name: (info, load_clip(info.name)) for info in clip_index()}


def test_index_contents():
    clips = clip_index()
    assert len(clips) == 43
    assert len({c.subject for c in clips}) == 17
    assert len({c.name for c in clips}) == 43
    assert sum(c.frames for c in clips) == 15847
    by_name = {c.name: c for c in clips}
    c = by_name["05_02"]
    assert (c.file, c.subject, c.trial, c.category, c.activity, c.frames, c.fps, c.proportions) == (
        "05_02.bvh", 5, 2, "dance/modern", "dance", 281, 30.0, "true"
    )
    assert c.description.startswith("dance - expressive arms")
    assert {c.name for c in clips if c.proportions == "short-torso"} == {"08_02", "09_11", "49_08", "55_01"}
    assert by_name["135_09"].activity == "martial arts"
    clips.clear()  # the returned list is a copy
    assert len(clip_index()) == 43


def test_every_clip_loads_with_index_frame_count(all_clips):
    assert len(all_clips) == 43
    for name, (info, m) in all_clips.items():
        assert m.name == name
        assert m.num_frames == info.frames, name
        assert m.fps == info.fps == 30.0, name
        assert m.joint_names == CMU31.joint_names and m.parents == CMU31.parents, name
        assert m.local_rotations.shape == (info.frames, 31, 3, 3) and m.root_positions.shape == (info.frames, 3)
        assert m.local_rotations.dtype == torch.float32
        assert sorted(m.end_sites) == [5, 10, 16, 22, 23, 29, 30], name


def test_bone_lengths_constant_over_frames(all_clips):
    """FK keeps every bone at its OFFSET length in every (strided) frame of every clip."""
    child = torch.tensor([c for _, c in CMU31.limbs])
    parent = torch.tensor([p for p, _ in CMU31.limbs])
    for name, (_, m) in all_clips.items():
        joints = forward_kinematics(m.root_positions[::7], m.local_rotations[::7], m.offsets, m.parents)
        lengths = (joints[:, child] - joints[:, parent]).norm(dim=-1)  # (T', 30)
        expected = m.offsets[child].norm(dim=-1)
        torch.testing.assert_close(lengths, expected.expand_as(lengths), atol=1e-5, rtol=0, msg=name)


def test_units_are_metres(all_clips):
    info, walk = all_clips["07_03"]
    assert info.category == "walk"
    joints = motion_joints(walk)
    assert 0.8 <= joints[:, 0, 1].median() <= 1.05  # hip height
    thigh = (joints[:, CMU31.index("LeftLeg")] - joints[:, CMU31.index("LeftUpLeg")]).norm(dim=-1)
    assert 0.37 <= thigh.mean() <= 0.43
    for name, (info, m) in all_clips.items():
        thighs = m.offsets[[CMU31.index("LeftLeg"), CMU31.index("RightLeg")]].norm(dim=-1)
        assert ((thighs > 0.36) & (thighs < 0.44)).all(), name


def test_heights_match_index_measurements(all_clips):
    """Median hip height and lowest toe (ToeBase) height agree with index.csv (units, 2 decimals)."""
    with open(mocap.mocap_dir() / "index.csv", newline="") as f:
        rows = {Path(r["file"]).stem: r for r in csv.DictReader(f)}
    toes = [CMU31.index("LeftToeBase"), CMU31.index("RightToeBase")]
    for name, (_, m) in all_clips.items():
        y = motion_joints(m)[..., 1].double() / U
        hip = torch.quantile(y[:, 0], 0.5).item()
        assert hip == pytest.approx(float(rows[name]["median_hip_height_units"]), abs=0.006), name
        toe = y[:, toes].min().item()
        assert toe == pytest.approx(float(rows[name]["min_toe_height_units"]), abs=0.006), name
        assert abs(toe * U) < 0.1, name  # the floor is at about y = 0


def test_motion_to_h36m_joint_by_joint():
    m = load_clip("124_01")
    frame = 80
    one = load_clip("124_01")
    one.root_positions = one.root_positions[frame : frame + 1]
    one.local_rotations = one.local_rotations[frame : frame + 1]
    h36m = motion_to_h36m(one)[0]
    assert h36m.shape == (17, 3)
    torch.testing.assert_close(motion_to_h36m(m)[frame], h36m)

    cmu = motion_joints(one)[0]
    # Head top computed independently: FK on a skeleton with the End Site as a 32nd joint.
    head = CMU31.index("Head")
    offsets = torch.cat([one.offsets, one.end_sites[head][None]])
    rotations = torch.cat([one.local_rotations, torch.eye(3)[None, None]], dim=1)
    head_top = forward_kinematics(one.root_positions, rotations, offsets, CMU31.parents + (head,))[0, -1]

    table = {
        "Hip": "Hips", "RHip": "RightUpLeg", "RKnee": "RightLeg", "RFoot": "RightFoot",
        "LHip": "LeftUpLeg", "LKnee": "LeftLeg", "LFoot": "LeftFoot", "Spine": "Spine", "Thorax": "Neck",
        "Neck/Nose": "Head", "LShoulder": "LeftArm", "LElbow": "LeftForeArm", "LWrist": "LeftHand",
        "RShoulder": "RightArm", "RElbow": "RightForeArm", "RWrist": "RightHand",
    }  # fmt: skip
    for h, name in enumerate(H36M17.joint_names):
        want = head_top if name == "Head" else cmu[CMU31.index(table[name])]
        torch.testing.assert_close(h36m[h], want, atol=1e-6, rtol=0, msg=name)
    # anatomical sanity: head top above the base of the head by 8-15 cm
    assert 0.08 < (h36m[10] - h36m[9]).norm() < 0.15


def test_load_clip_returns_independent_copies():
    a = load_clip("02_03")
    reference = a.local_rotations.clone(), a.root_positions.clone(), a.end_sites[16].clone()
    a.local_rotations.zero_()
    a.root_positions += 5
    a.end_sites[16].zero_()
    a.offsets.zero_()
    b = load_clip("02_03")
    torch.testing.assert_close(b.local_rotations, reference[0])
    torch.testing.assert_close(b.root_positions, reference[1])
    torch.testing.assert_close(b.end_sites[16], reference[2])
    assert b.offsets.abs().sum() > 0


# ------------------------------------------------------------------------------ bad input


def test_unknown_clip_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown clip name '99_99'.*'05_02'.*'135_11'"):
        load_clip("99_99")
    with pytest.raises(ValueError, match="unknown clip name '05_02.bvh'"):
        load_clip("05_02.bvh")
    with pytest.raises(TypeError, match="name"):
        load_clip(502)


def test_missing_data_dir_mentions_env(tmp_path, monkeypatch):
    monkeypatch.setenv("POSELAB_MOCAP_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="POSELAB_MOCAP_DIR.*nowhere|nowhere.*POSELAB_MOCAP_DIR"):
        clip_index()
    with pytest.raises(FileNotFoundError, match="POSELAB_MOCAP_DIR"):
        load_clip("05_02")


def test_missing_index_and_missing_clip_file(tmp_path, monkeypatch):
    monkeypatch.setenv("POSELAB_MOCAP_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="index.csv.*POSELAB_MOCAP_DIR"):
        clip_index()
    (tmp_path / "index.csv").write_text((mocap.MOCAP_DIR / "index.csv").read_text())
    assert len(clip_index()) == 43
    with pytest.raises(FileNotFoundError, match=r"'05_02'.*05_02\.bvh"):
        load_clip("05_02")


def test_frame_count_disagreeing_with_index(tmp_path, monkeypatch):
    monkeypatch.setenv("POSELAB_MOCAP_DIR", str(tmp_path))
    (tmp_path / "index.csv").write_text((mocap.MOCAP_DIR / "index.csv").read_text())
    text = (mocap.MOCAP_DIR / "02_03.bvh").read_text().splitlines()
    i = next(k for k, line in enumerate(text) if line.startswith("Frames:"))
    text[i] = "Frames: 43"
    (tmp_path / "02_03.bvh").write_text("\n".join(text[:-1]) + "\n")
    with pytest.raises(BVHError, match=r"02_03\.bvh: expected 44 frames \(index.csv\), found 43"):
        load_clip("02_03")


def _replace(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


BROKEN = {
    # name: (file text, regex the message must match after the file name)
    "truncated": (
        TINY.rsplit("0 0 0 0 0 0 0 0 0 0 0 0\n", 1)[0],
        r"truncated file: expected 3 frame lines \('Frames: 3' on line 22\), found 2",
    ),
    "malformed_number": (
        _replace(TINY, "0 0 0 0 0 0 90 90 0", "0 0 0 0 0 0 9O 90 0"),
        r"line 25: expected a number for a channel value, found malformed number '9O'",
    ),
    "too_few_values": (
        _replace(TINY, "0 0 0 0 0 0 90 90 0 0 0 0", "0 0 0 0 0 0 90 90 0 0 0"),
        r"line 25: expected 12 values per frame line \(the channels declared in the HIERARCHY\), found 11 values",
    ),
    "too_many_values": (  # bvhio alone would silently ignore the extra number
        _replace(TINY, "0 0 0 0 0 0 90 90 0 0 0 0", "0 0 0 0 0 0 90 90 0 0 0 0 7"),
        r"line 25: expected 12 values per frame line .*found 13 values",
    ),
    "missing_hierarchy": (TINY.replace("HIERARCHY\n", ""), r"line 1: expected 'HIERARCHY' on the first line, found 'ROOT R'"),
    "missing_motion": (TINY.split("MOTION")[0], r"end of file: expected 'MOTION' after the hierarchy, found the end"),
    "motion_misspelt": (_replace(TINY, "MOTION", "MOTON"), r"line 21: expected 'MOTION' after the hierarchy.*found 'MOTON'"),
    "truncated_hierarchy": (TINY.split("\t\tJOINT B")[0], r"end of file: expected 'JOINT', 'End Site' or '}' closing joint 'A'"),
    "extra_frame_line": (TINY + "1 2 3 4 5 6 7 8 9 10 11 12\n", r"line 27: expected the end of the file after 3 frame lines"),
    "nan_value": (_replace(TINY, "10 20 30", "10 nan 30"), r"line 24: expected a finite number for a channel value, found 'nan'"),
    "bad_frame_count": (_replace(TINY, "Frames: 3", "Frames: three"), r"line 22: expected an integer frame count"),
    "zero_frames": (_replace(TINY, "Frames: 3", "Frames: 0"), r"line 22: expected a frame count >= 1, found 0"),
    "bad_offset": (_replace(TINY, "OFFSET 1 0 0", "OFFSET 1 0"), r"line 8: expected 'OFFSET x y z' \(3 numbers\) of joint 'A'"),
    "channel_count_label_mismatch": (
        _replace(TINY, "CHANNELS 3 Zrotation Yrotation Xrotation", "CHANNELS 3 Zrotation Yrotation"),
        r"line 9: expected 3 channel names for joint 'A' \(as declared\), found 2",
    ),
    "unknown_channel": (
        _replace(TINY, "CHANNELS 3 Zrotation Yrotation Xrotation", "CHANNELS 3 Zrotation Yrotation Wrotation"),
        r"line 9: expected a channel name, one of .*Xrotation.*for joint 'A', found 'Wrotation'",
    ),
    "repeated_position_channel": (
        _replace(TINY, "CHANNELS 3 Zrotation Yrotation Xrotation", "CHANNELS 3 Xposition Yrotation Xposition"),
        r"line 9: expected each channel at most once for joint 'A'",
    ),
    "value_overflows_float32": (  # finite in float64, inf in bvhio's float32
        _replace(TINY, "10 20 30", "10 1e39 30"),
        r"line 24: expected a number within the float32 range \(\|x\| <= 3\.403e\+38\) for a channel value, "
        r"found '1e39' \(overflows\)",
    ),
    "negative_value_overflows_float32": (
        _replace(TINY, "0 0 0 0 0 0 90 90 0", "0 0 0 0 0 0 90 -4e38 0"),
        r"line 25: expected a number within the float32 range .* found '-4e38' \(overflows\)",
    ),
    "offset_overflows_float32": (
        _replace(TINY, "OFFSET 1 0 0", "OFFSET 1 0 1e39"),
        r"line 8: expected a number within the float32 range .* for the OFFSET of joint 'A', found '1e39'",
    ),
    "duplicate_joint": (_replace(TINY, "JOINT B", "JOINT A"), r"line 10: expected unique joint names, found a second joint 'A'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_malformed_bvh_raises(tmp_path, case):
    text, message = BROKEN[case]
    path = _write(tmp_path, text, f"{case}.bvh")
    with pytest.raises(BVHError, match=rf"{case}\.bvh[,:] {message}"):
        load_bvh(path)


def test_bvherror_is_valueerror():
    assert issubclass(BVHError, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"BVH file not found: .*absent\.bvh"):
        load_bvh(tmp_path / "absent.bvh")


def test_directory_is_reported_as_directory(tmp_path, monkeypatch):
    folder = tmp_path / "walk.bvh"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=r"walk\.bvh: expected a BVH file, found a directory"):
        load_bvh(folder)
    monkeypatch.setenv("POSELAB_MOCAP_DIR", str(tmp_path))
    (tmp_path / "index.csv").write_text((mocap.MOCAP_DIR / "index.csv").read_text())
    (tmp_path / "05_02.bvh").mkdir()
    with pytest.raises(IsADirectoryError, match=r"clip '05_02': .*05_02\.bvh listed in index.csv is a directory"):
        load_clip("05_02")


def test_utf8_bom_is_accepted(tmp_path):
    plain = load_bvh(_write(tmp_path, TINY, "plain.bvh"))
    path = tmp_path / "bom.bvh"
    path.write_bytes(b"\xef\xbb\xbf" + TINY.encode())
    marked = load_bvh(path)
    assert marked.joint_names == plain.joint_names and marked.num_frames == 3
    assert torch.equal(motion_joints(marked), motion_joints(plain))
    # errors still count lines from the first line of the file
    path.write_bytes(b"\xef\xbb\xbf" + _replace(TINY, "10 20 30", "10 x 30").encode())
    with pytest.raises(BVHError, match=r"bom\.bvh, line 24: expected a number"):
        load_bvh(path)


def test_motion_to_h36m_rejects_non_cmu(tmp_path):
    m = load_bvh(_write(tmp_path, TINY))
    with pytest.raises(ValueError, match="expected the 31 CMU31 joints"):
        motion_to_h36m(m)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda r, q, o: (r[:, :2], q, o), r"root_positions: expected shape \(4, 3\)"),
        (lambda r, q, o: (r, q[:, :30], o), r"local_rotations: expected shape \(\.\.\., 31, 3, 3\)"),
        (lambda r, q, o: (r, q, o[:30]), r"offsets: expected shape \(31, 3\)"),
        (lambda r, q, o: (r, q, o.expand(5, 31, 3)), r"offsets: expected shape \(31, 3\) or \(4, 31, 3\)"),
        (lambda r, q, o: (r, q, o.double()), r"offsets: expected dtype torch.float32"),
        (lambda r, q, o: (r.numpy(), q, o), r"root_positions: expected a torch.Tensor"),
    ],
)
def test_fk_bad_input(change, match):
    m = load_clip("02_03")
    r, q, o = change(m.root_positions[:4], m.local_rotations[:4], m.offsets)
    with pytest.raises((ValueError, TypeError), match=match):
        forward_kinematics(r, q, o, m.parents)


def test_fk_bad_parents():
    with pytest.raises(ValueError, match="parents"):
        forward_kinematics(torch.zeros(2, 3), torch.eye(3).expand(2, 3, 3, 3), torch.zeros(3, 3), (-1, 2, 0))
