import numpy as np
import pytest
import torch

from poselab.data.skeleton import CMU31, CMU_HEAD_TOP, CMU_TO_H36M, H36M17, Skeleton, cmu_to_h36m

SKELETONS = [CMU31, H36M17]


@pytest.mark.parametrize("skel", SKELETONS, ids=lambda s: s.name)
def test_topology_invariants(skel):
    assert len(skel.joint_names) == len(skel.parents) == skel.num_joints
    assert skel.parents[0] == -1
    assert all(0 <= p < j for j, p in enumerate(skel.parents) if j > 0)
    assert len(skel.limbs) == skel.num_joints - 1
    assert {c for _, c in skel.limbs} == set(range(1, skel.num_joints))
    assert all(skel.parents[c] == p for p, c in skel.limbs)


def _side_swapped(name: str) -> str:
    for left, right in (("Left", "Right"), ("L", "R")):
        if name.startswith(left):
            return right + name[len(left) :]
    raise AssertionError(f"{name} does not start with a left prefix")


@pytest.mark.parametrize("skel", SKELETONS, ids=lambda s: s.name)
def test_symmetric_pairs_are_left_right(skel):
    for left, right in skel.symmetric_joints:
        assert _side_swapped(skel.joint_names[left]) == skel.joint_names[right]
    # every L*/R* joint is in exactly one pair
    paired = [j for pair in skel.symmetric_joints for j in pair]
    assert len(paired) == len(set(paired))
    def has_side(n: str) -> bool:
        return n.startswith(("Left", "Right")) or (n[0] in "LR" and n[1].isupper())

    sided = {j for j, n in enumerate(skel.joint_names) if has_side(n)}
    assert sided == set(paired)


@pytest.mark.parametrize("skel", SKELETONS, ids=lambda s: s.name)
def test_symmetric_limbs(skel):
    limbs = set(skel.limbs)
    assert len(skel.symmetric_limbs) == len(skel.symmetric_joints)
    for (lp, lc), (rp, rc) in skel.symmetric_limbs:
        assert (lp, lc) in limbs and (rp, rc) in limbs
        assert (lc, rc) in skel.symmetric_joints


def test_known_layouts():
    assert CMU31.num_joints == 31 and H36M17.num_joints == 17
    assert list(CMU31.parents) == [-1, 0, 1, 2, 3, 4, 0, 6, 7, 8, 9, 0, 11, 12, 13, 14, 15, 13, 17, 18, 19, 20, 21,
                                   20, 13, 24, 25, 26, 27, 28, 27]  # fmt: skip
    assert list(H36M17.parents) == [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15]
    assert CMU31.joint_names[16] == "Head" and CMU31.index("RThumb") == 30
    assert H36M17.index("Neck/Nose") == 9 and H36M17.index("RWrist") == 16
    assert len(CMU31.symmetric_joints) == 12 and len(H36M17.symmetric_joints) == 6


def test_index_unknown_name_lists_valid_names():
    with pytest.raises(KeyError, match="LeftHand.*RThumb"):
        CMU31.index("LeftPaw")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(joint_names=("a", "b"), parents=(-1,)), "one parent per joint"),
        (dict(joint_names=("a", "a"), parents=(-1, 0)), "unique"),
        (dict(joint_names=("a", "b"), parents=(0, -1)), "root"),
        (dict(joint_names=("a", "b", "c"), parents=(-1, 2, 1)), r"parents\[1\] < 1"),
        (dict(joint_names=("a", "b"), parents=(-1, 0), symmetric_joints=((1, 5),)), "symmetric pair"),
    ],
)
def test_skeleton_rejects_bad_topology(kwargs, match):
    kwargs.setdefault("symmetric_joints", ())
    with pytest.raises(ValueError, match=match):
        Skeleton(name="bad", **kwargs)


EXPECTED_MAP = {  # H36M17 name -> CMU source (name, or "HeadTop" for the Head End Site)
    "Hip": "Hips", "RHip": "RightUpLeg", "RKnee": "RightLeg", "RFoot": "RightFoot",
    "LHip": "LeftUpLeg", "LKnee": "LeftLeg", "LFoot": "LeftFoot", "Spine": "Spine", "Thorax": "Neck",
    "Neck/Nose": "Head", "Head": "HeadTop", "LShoulder": "LeftArm", "LElbow": "LeftForeArm",
    "LWrist": "LeftHand", "RShoulder": "RightArm", "RElbow": "RightForeArm", "RWrist": "RightHand",
}  # fmt: skip


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_cmu_to_h36m_selects_documented_joints(backend):
    # points whose coordinates encode their CMU index, with a leading batch of 2 x 3
    base = np.arange(32, dtype=np.float64)[:, None] * np.array([1.0, 10.0, 100.0])
    pts = np.broadcast_to(base, (2, 3, 32, 3)).copy()
    pts = torch.from_numpy(pts) if backend == "torch" else pts
    out = cmu_to_h36m(pts)
    assert type(out) is type(pts) and tuple(out.shape) == (2, 3, 17, 3) and out.dtype == pts.dtype
    for h, name in enumerate(H36M17.joint_names):
        src = EXPECTED_MAP[name]
        c = CMU_HEAD_TOP if src == "HeadTop" else CMU31.index(src)
        assert np.asarray(out[1, 2, h]).tolist() == [c, 10 * c, 100 * c], name
    assert len(CMU_TO_H36M) == 17


def test_cmu_to_h36m_returns_a_copy():
    pts = torch.zeros(32, 3)
    out = cmu_to_h36m(pts)
    out += 1
    assert pts.abs().sum() == 0


@pytest.mark.parametrize("shape", [(31, 3), (5, 32, 2), (32,)])
def test_cmu_to_h36m_bad_shape(shape):
    with pytest.raises(ValueError, match=r"points: expected shape \(\.\.\., 32, 3\)"):
        cmu_to_h36m(torch.zeros(shape))


def test_cmu_to_h36m_bad_type():
    with pytest.raises(TypeError, match="points"):
        cmu_to_h36m([[0.0, 0.0, 0.0]] * 32)


def test_cmu_to_h36m_table_names_every_joint_and_its_source():
    from poselab.data.skeleton import cmu_to_h36m_table

    table = cmu_to_h36m_table()
    assert len(table) == H36M17.num_joints
    assert table[0] == ("Hip", "Hips")
    assert table[10] == ("Head", "Head End Site")
    assert table[16] == ("RWrist", "RightHand")


# ------------------------------------------------------------- layouts and structural limbs


def test_layouts_name_the_two_skeletons():
    from poselab.data.skeleton import LAYOUTS, ZERO_LENGTH_JOINTS

    assert LAYOUTS == {"h36m17": H36M17, "cmu31": CMU31}
    assert all(name == skel.name for name, skel in LAYOUTS.items())
    assert set(ZERO_LENGTH_JOINTS) <= set(LAYOUTS)
    for name, joints in ZERO_LENGTH_JOINTS.items():
        assert all(LAYOUTS[name].index(j) > 0 for j in joints)  # real joints, never the root


def test_structure_limbs_of_h36m17_are_all_its_limbs():
    from poselab.data.skeleton import structure_limbs, structure_symmetric_limbs

    assert structure_limbs(H36M17) == H36M17.limbs
    assert structure_symmetric_limbs(H36M17) == H36M17.symmetric_limbs


def test_structure_limbs_of_cmu31_drop_the_three_zero_length_bones():
    from poselab.data.skeleton import structure_limbs, structure_symmetric_limbs

    limbs, pairs = structure_limbs(CMU31), structure_symmetric_limbs(CMU31)
    gone = {CMU31.index(n) for n in ("LHipJoint", "RHipJoint", "LowerBack")}
    assert len(limbs) == 27 and len(pairs) == 11
    assert set(CMU31.limbs) - set(limbs) == {(0, j) for j in gone}
    assert set(limbs) <= set(CMU31.limbs) and all(c not in gone for _, c in limbs)
    assert set(pairs) == {p for p in CMU31.symmetric_limbs if p[0][1] not in gone}
    # the bones out of the zero-length joints stay: hip joint -> upper leg, lower back -> spine
    assert {(1, 2), (6, 7), (11, 12)} <= set(limbs)


@pytest.fixture(scope="module")
def cmu31_targets():
    from poselab.data.lifting import build_lifting_splits

    return build_lifting_splits("fast", seed=0, layout="cmu31")["test_in"].targets  # (N, 31, 3) metres


def test_structure_limbs_have_positive_length_on_real_cmu31_data(cmu31_targets):
    from poselab.data.skeleton import structure_limbs, structure_symmetric_limbs

    y = cmu31_targets
    seg = torch.tensor(structure_limbs(CMU31))
    lengths = (y[:, seg[:, 1]] - y[:, seg[:, 0]]).norm(dim=-1)  # (N, 27)
    assert lengths.min() > 0.005  # metres: every remaining bone is a real segment
    paired = torch.tensor(structure_symmetric_limbs(CMU31)).reshape(-1, 2)  # (22, 2) left, right, left, ...
    assert (y[:, paired[:, 1]] - y[:, paired[:, 0]]).norm(dim=-1).min() > 0.005
    full = torch.tensor(CMU31.limbs)
    dropped = (y[:, full[:, 1]] - y[:, full[:, 0]]).norm(dim=-1).amax(dim=0) < 1e-6  # (30,)
    assert full[dropped].tolist() == [[0, 1], [0, 6], [0, 11]]


def test_structural_metrics_work_on_cmu31_with_structure_limbs(cmu31_targets):
    from poselab.data.skeleton import structure_limbs, structure_symmetric_limbs
    from poselab.metrics import bsle, lle, lse

    y = cmu31_targets[:200]
    pred = y + 0.01 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    limbs, pairs = structure_limbs(CMU31), structure_symmetric_limbs(CMU31)
    assert bsle(y, y, limbs=limbs).item() == 0.0
    assert bsle(pred, y, limbs=limbs, reduction="none").shape == (200, 27)
    assert 0 < bsle(pred, y, limbs=limbs).item() < 1
    assert lle(pred, y, symmetric_limbs=pairs, reduction="none").shape == (200, 22)
    assert 0 < lle(pred, y, symmetric_limbs=pairs).item() < 1
    sym = lse(y, symmetric_limbs=pairs, reduction="none")
    assert sym.shape == (200, 11) and torch.isfinite(sym).all() and 0 <= sym.min() and sym.max() < 1
    # with every bone, the zero-length ones make the relative error undefined
    with pytest.raises(ValueError, match="length 0"):
        bsle(pred, y, limbs=CMU31)
    with pytest.raises(ValueError, match="length 0"):
        lle(pred, y, symmetric_limbs=CMU31)


# ------------------------------------------------------------- COCO17


def test_coco17_names_and_tree():
    from poselab.data.skeleton import COCO17, LAYOUTS

    assert COCO17.name == "coco17" and COCO17.num_joints == 17
    assert COCO17.joint_names[:5] == ("nose", "left_eye", "right_eye", "left_ear", "right_ear")
    assert COCO17.joint_names[-2:] == ("left_ankle", "right_ankle")
    assert COCO17.index("left_shoulder") == 5 and COCO17.index("right_hip") == 12
    parent = {COCO17.joint_names[c]: COCO17.joint_names[p] for p, c in COCO17.limbs}
    assert parent == {
        "left_eye": "nose", "right_eye": "nose", "left_ear": "left_eye", "right_ear": "right_eye",
        "left_shoulder": "nose", "right_shoulder": "nose", "left_elbow": "left_shoulder",
        "right_elbow": "right_shoulder", "left_wrist": "left_elbow", "right_wrist": "right_elbow",
        "left_hip": "left_shoulder", "right_hip": "right_shoulder", "left_knee": "left_hip",
        "right_knee": "right_hip", "left_ankle": "left_knee", "right_ankle": "right_knee",
    }  # fmt: skip
    assert "coco17" not in LAYOUTS  # no lifting data in this layout (the clips have no face points)


def test_coco17_symmetric_pairs_and_limbs():
    from poselab.data.skeleton import COCO17

    pairs = [(COCO17.joint_names[a], COCO17.joint_names[b]) for a, b in COCO17.symmetric_joints]
    assert len(pairs) == 8
    assert all(a.startswith("left_") and b == "right_" + a[len("left_") :] for a, b in pairs)
    paired = {j for pair in COCO17.symmetric_joints for j in pair}
    assert paired == set(range(1, 17))  # every joint but the nose
    assert len(COCO17.limbs) == 16 and len(COCO17.symmetric_limbs) == 8
    for (lp, lc), (rp, rc) in COCO17.symmetric_limbs:  # mirror limbs start at mirror joints (or both at the nose)
        assert (lc, rc) in COCO17.symmetric_joints
        assert lp == rp == 0 or (lp, rp) in COCO17.symmetric_joints
