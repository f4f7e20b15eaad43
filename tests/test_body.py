"""Tests for poselab.data.body: the CMU -> Anny mapping, outputs, the skeleton without skinning, the
camera-frame pose parameters, phenotype sampling and errors."""

import dataclasses
import math

import pytest
import torch

from poselab.data import body as body_module
from poselab.data.body import (
    BODY_DOMAINS,
    LIMB_BONES,
    PHENOTYPE_RANGES,
    PHENOTYPES,
    REGIONS,
    BodyOutput,
    PosedSkeleton,
    body_model,
    bvh_in_anny_frame,
    bvh_to_anny_axes,
    to_camera_frame,
)
from poselab.data.mocap import Motion, load_clip, motion_end_sites, motion_joints
from poselab.data.skeleton import CMU31, COCO17, H36M17, cmu_to_h36m

CLIPS = ("05_02", "135_06", "02_03")  # dance, karate, run (all with true CMU proportions)


@pytest.fixture(scope="module")
def bm():
    return body_model("cpu")


@pytest.fixture(scope="module")
def clips():
    return {name: load_clip(name) for name in CLIPS}


def _bvh_points(motion, frames):
    """(T, 32, 3) BVH joints + head top in Anny axes, and (T, 31, 3) segment tips (child or End Site)."""
    sub = dataclasses.replace(motion, root_positions=motion.root_positions[frames],
                              local_rotations=motion.local_rotations[frames])  # fmt: skip
    joints, ends = motion_end_sites(sub)
    C = bvh_to_anny_axes()
    head_top = ends[CMU31.index("Head")]
    return torch.cat([joints, head_top[:, None]], dim=1) @ C.T, joints @ C.T, {j: e @ C.T for j, e in ends.items()}


def _angle_deg(u, v):
    u, v = u.double(), v.double()
    cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


def _limb_errors(bm, out, motion, frames):
    """(T, 12) angle in degrees between each posed Anny limb bone and its BVH segment."""
    _, joints, ends = _bvh_points(motion, frames)
    errors = []
    for c, name in enumerate(bm.bone_names):
        if name not in LIMB_BONES:
            continue
        j = CMU31.index(name)
        kids = [k for k, p in enumerate(CMU31.parents) if p == j]
        tip = joints[:, kids[0]] if kids else ends[j]
        errors.append(_angle_deg(out.bone_tails[:, c] - out.bone_heads[:, c], tip - joints[:, j]))
    return torch.stack(errors, dim=1)


def _facing(h36m):
    """(T, 3) unit horizontal facing direction from the hip axis (left x up = forward for Z up)."""
    across = h36m[:, H36M17.index("LHip")] - h36m[:, H36M17.index("RHip")]
    forward = torch.linalg.cross(across, torch.tensor([0.0, 0.0, 1.0], dtype=across.dtype).expand_as(across))
    forward = forward * torch.tensor([1.0, 1.0, 0.0], dtype=across.dtype)
    return forward / forward.norm(dim=-1, keepdim=True)


def _leg_length(h36m):
    """(T,) thigh + shin length, mean of both sides."""
    j = H36M17.index
    seg = lambda a, b: (h36m[:, j(a)] - h36m[:, j(b)]).norm(dim=-1)  # noqa: E731
    return 0.5 * (seg("LHip", "LKnee") + seg("LKnee", "LFoot") + seg("RHip", "RKnee") + seg("RKnee", "RFoot"))


def _hip_mid(h36m):
    return 0.5 * (h36m[:, H36M17.index("LHip")] + h36m[:, H36M17.index("RHip")])


def _zero_pose_motion(motion, yaw_deg=(0.0,)):
    """A motion in the CMU zero pose (all rotations I), one frame per root yaw (about BVH +Y)."""
    n = len(yaw_deg)
    rot = torch.eye(3).repeat(n, CMU31.num_joints, 1, 1)
    for i, yaw in enumerate(yaw_deg):
        c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
        rot[i, 0] = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    root = torch.tensor([[0.3, 0.95, -0.2]]).repeat(n, 1)
    return dataclasses.replace(motion, name="zero", root_positions=root, local_rotations=rot)


# --- model, cache, regions ------------------------------------------------------------------


def test_model_attributes_and_cache(bm):
    assert body_model("cpu") is bm and body_model(torch.device("cpu")) is bm
    assert bm.dtype == torch.float32 and bm.device == torch.device("cpu")
    assert bm.num_vertices == 13718
    assert bm.faces.shape == (27420, 3) and bm.faces.dtype == torch.long
    assert int(bm.faces.min()) == 0 and int(bm.faces.max()) == bm.num_vertices - 1
    assert len(bm.bone_names) == 31 and bm.bone_names[0] == "Hips"
    assert "LeftHandFinger1" in bm.bone_names and "LeftHandIndex1" not in bm.bone_names
    assert set(LIMB_BONES) <= set(bm.bone_names) and len(LIMB_BONES) == 12
    assert PHENOTYPES == tuple(bm._anny.phenotype_labels)
    regions = bm.vertex_regions
    assert regions.shape == (bm.num_vertices,) and regions.dtype == torch.long
    assert torch.bincount(regions, minlength=len(REGIONS)).min() > 100  # every region is used


def test_regions_are_where_they_should_be(bm):
    rest = bm.rest_vertices(torch.full((1, 6), 0.5))[0]
    z, x = rest[:, 2], rest[:, 0]
    r = {name: bm.vertex_regions == i for i, name in enumerate(REGIONS)}
    mean_z = {name: float(z[m].mean()) for name, m in r.items()}
    assert max(mean_z, key=mean_z.get) == "head" and min(mean_z, key=mean_z.get) == "feet"
    assert mean_z["torso"] > mean_z["legs"] > mean_z["feet"]
    assert z[r["head"]].min() > max(z[r["hands"]].max(), z[r["legs"]].max(), z[r["feet"]].max())
    assert z[r["feet"]].max() < z[r["legs"]].mean()
    assert z[r["head"]].max() == z.max()  # the top of the head
    # A-pose: hands and arms away from the body's centre line, on both sides
    for name in ("hands", "arms"):
        assert (x[r[name]].abs() > 0.1).float().mean() > 0.95
        assert abs(float((x[r[name]] > 0).float().mean()) - 0.5) < 0.01
    assert x[r["head"]].abs().max() < 0.15


def test_rest_vertices_are_the_identity_pose_up_to_a_shift(bm):
    gen = torch.Generator().manual_seed(3)
    ph = bm.sample_phenotypes(3, "realistic", gen)
    rest = bm.rest_vertices(ph)
    identity = torch.eye(4).expand(3, 31, 4, 4)
    out = bm(identity, ph)
    shift = out.vertices - rest
    assert shift.std(dim=1).max() < 1e-5  # one translation per body (the pelvis to the origin)
    assert out.bone_heads[:, 0].abs().max() < 1e-6  # identity parameters put the pelvis at the origin
    heights = rest[..., 2].amax(1) - rest[..., 2].amin(1)
    assert ((heights > 1.35) & (heights < 2.1)).all()


def test_float64_model_is_separate_and_agrees(bm, clips):
    bm64 = body_model("cpu", dtype=torch.float64)
    assert bm64 is not bm and bm64 is body_model("cpu", torch.float64) and bm64.dtype == torch.float64
    motion, frames = clips["05_02"], torch.tensor([100, 200])
    ph = bm64.sample_phenotypes(2, "realistic", torch.Generator().manual_seed(10))
    torch.testing.assert_close(ph.float(), bm.sample_phenotypes(2, "realistic", torch.Generator().manual_seed(10)))
    with torch.no_grad():
        out64 = bm64.pose_motion(motion, frames, ph)
        out32 = bm.pose_motion(motion, frames, ph.float())
    assert out64.vertices.dtype == torch.float64
    assert (out64.vertices.float() - out32.vertices).abs().max() < 1e-4
    assert _limb_errors(bm64, out64, motion, frames).max() < 1e-4
    with pytest.raises(TypeError, match="body_model\\(dtype=torch.float32\\)"):
        bm64.forward(torch.eye(4).expand(2, 31, 4, 4), ph.float())


# --- the mapping ------------------------------------------------------------------------------


def test_limb_directions_match_bvh_exactly(bm, clips):
    gen = torch.Generator().manual_seed(0)
    worst = []
    for name, motion in clips.items():
        frames = torch.randint(0, motion.num_frames, (6,), generator=gen)
        ph = bm.sample_phenotypes(6, "realistic", gen)
        with torch.no_grad():
            out = bm.pose_motion(motion, frames, ph)
        err = _limb_errors(bm, out, motion, frames)
        assert err.shape == (6, 12)
        worst.append(float(err.max()))
    assert max(worst) < 0.01, worst  # degrees; measured about 4e-4 in float32


def test_limb_directions_need_the_body_specific_correction(bm, clips):
    """S depends on the phenotype: the default body's pose parameters leave errors on other bodies."""
    motion, gen = clips["05_02"], torch.Generator().manual_seed(1)
    frames = torch.arange(0, 40, 10)
    ph = bm.sample_phenotypes(4, "realistic", gen)
    with torch.no_grad():
        params_default = bm.pose_parameters(motion, frames, torch.full((4, 6), 0.5))
        err_own = _limb_errors(bm, bm(bm.pose_parameters(motion, frames, ph), ph), motion, frames)
        err_default = _limb_errors(bm, bm(params_default, ph), motion, frames)
    assert err_own.max() < 0.01 and err_default.max() > 0.5


def test_joints_match_bvh_up_to_body_proportions(bm, clips):
    gen = torch.Generator().manual_seed(2)
    for name, motion in clips.items():
        frames = torch.randint(0, motion.num_frames, (6,), generator=gen)
        ph = bm.sample_phenotypes(6, "realistic", gen)
        with torch.no_grad():
            out = bm.pose_motion(motion, frames, ph)
        bvh = cmu_to_h36m(_bvh_points(motion, frames)[0])
        scale = (_leg_length(out.joints) / _leg_length(bvh))[:, None]
        # the root translation puts Anny's hip midpoint exactly at the scaled BVH hip midpoint
        assert (_hip_mid(out.joints) - scale * _hip_mid(bvh)).norm(dim=-1).max() < 1e-4
        rel_anny = out.joints - _hip_mid(out.joints)[:, None]
        rel_bvh = (bvh - _hip_mid(bvh)[:, None]) * scale[..., None]
        err = (rel_anny - rel_bvh).norm(dim=-1)
        assert err.mean() < 0.12, (name, float(err.mean()))  # body proportions differ; measured 7-9 cm
        # the legs are swung exactly and scaled: knees and ankles are much closer
        legs = [H36M17.index(j) for j in ("LKnee", "LFoot", "RKnee", "RFoot")]
        assert err[:, legs].mean() < 0.06
        # facing follows the BVH pelvis
        assert _angle_deg(_facing(out.joints), _facing(bvh)).max() < 1.0


def test_zero_pose_faces_minus_y_and_turns_with_the_root(bm, clips):
    motion = _zero_pose_motion(clips["05_02"], yaw_deg=(0.0, 90.0, 180.0))
    ph = torch.full((3, 6), 0.5)
    frames = torch.arange(3)
    with torch.no_grad():
        out = bm.pose_motion(motion, frames, ph)
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # BVH +Z, +X, -Z faces
    assert _angle_deg(_facing(out.joints), expected).max() < 1.0
    kp = out.keypoints[0]  # frame 0: facing -Y, the body's left is +X
    assert kp[COCO17.index("nose"), 1] < kp[COCO17.index("left_ear"), 1] - 0.05  # the nose is in front
    centre_x = _hip_mid(out.joints)[0, 0]
    assert kp[COCO17.index("left_wrist"), 0] - centre_x > 0.5 and kp[COCO17.index("right_wrist"), 0] - centre_x < -0.5
    j = out.joints[0]
    i = H36M17.index
    # the CMU zero pose: arms straight out sideways, near shoulder height
    for side, sign in (("L", 1.0), ("R", -1.0)):
        arm = j[i(f"{side}Wrist")] - j[i(f"{side}Shoulder")]
        assert sign * arm[0] > 0.45 and abs(float(arm[2])) < 0.1 * float(arm.norm())
    assert j[i("Head"), 2] > j[i("Neck/Nose"), 2] > j[i("Thorax"), 2] > j[i("Hip"), 2] > j[i("LKnee"), 2]
    assert _limb_errors(bm, out, motion, frames).max() < 0.01


def test_pose_parameters_structure(bm, clips):
    motion = clips["135_06"]
    frames = torch.tensor([0, 5, 100])
    ph = bm.sample_phenotypes(3, "synthetic", torch.Generator().manual_seed(4))
    P = bm.pose_parameters(motion, frames, ph)
    assert P.shape == (3, 31, 4, 4) and P.dtype == torch.float32
    R = P[..., :3, :3]
    eye = torch.eye(3).expand_as(R)
    assert (R @ R.transpose(-1, -2) - eye).abs().max() < 1e-5
    assert (torch.linalg.det(R) - 1).abs().max() < 1e-5
    assert (P[..., 3, :] == torch.tensor([0.0, 0.0, 0.0, 1.0])).all()
    assert (P[:, 1:, :3, 3] == 0).all()
    # the root rotation is the BVH root rotation in Anny's axes (S_root = I)
    C = bvh_to_anny_axes()
    assert (R[:, 0] - C @ motion.local_rotations[frames, 0] @ C.T).abs().max() < 1e-6
    # bones whose BVH rotation channels are always zero and whose parent is not swung get D = I
    for name in ("LHipJoint", "RHipJoint"):
        c = bm.bone_names.index(name)
        assert (R[:, c] - torch.eye(3)).abs().max() < 1e-6


def test_bvh_in_anny_frame(clips):
    motion = clips["02_03"]
    frames = torch.tensor([3, 1, 40])
    pts = bvh_in_anny_frame(motion, frames)
    ref = motion_joints(motion)[frames]
    assert pts.shape == (3, 31, 3)
    torch.testing.assert_close(pts, torch.stack([ref[..., 0], -ref[..., 2], ref[..., 1]], dim=-1))


def test_swing_known_answers():
    swing = body_module._swing
    x, y = torch.tensor([2.0, 0.0, 0.0]), torch.tensor([0.0, 3.0, 0.0])
    torch.testing.assert_close(swing(x, y), torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    torch.testing.assert_close(swing(x, x), torch.eye(3))
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    R = swing(a, b)
    torch.testing.assert_close((R @ a[..., None])[..., 0], b * (a.norm(dim=-1) / b.norm(dim=-1))[:, None])
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(20, 3, 3))
    # no twist: the axis a x b is left in place
    axis = torch.linalg.cross(a, b)
    torch.testing.assert_close((R @ axis[..., None])[..., 0], axis)
    assert torch.autograd.gradcheck(swing, (a[:3].clone().requires_grad_(), b[:3].clone().requires_grad_()))


# --- outputs and gradients ---------------------------------------------------------------------


def test_outputs_shapes_and_keypoints(bm, clips):
    motion = clips["05_02"]
    frames = torch.tensor([10, 20])
    ph = bm.sample_phenotypes(2, "realistic", torch.Generator().manual_seed(6))
    with torch.no_grad():
        out = bm.pose_motion(motion, frames, ph)
    assert isinstance(out, BodyOutput) and out.batch_size == 2
    assert out.vertices.shape == (2, 13718, 3)
    assert out.joints.shape == out.keypoints.shape == (2, 17, 3)
    assert out.bone_heads.shape == out.bone_tails.shape == (2, 31, 3)
    head = bm.bone_names.index("Head")
    torch.testing.assert_close(out.joints[:, H36M17.index("Head")], out.bone_tails[:, head])
    torch.testing.assert_close(out.joints[:, H36M17.index("Neck/Nose")], out.bone_heads[:, head])
    wrist = out.joints[:, H36M17.index("LWrist")]
    torch.testing.assert_close(wrist, out.bone_heads[:, bm.bone_names.index("LeftHand")])
    # COCO body keypoints lie close to the matching joints (a few cm: surface vs skeleton)
    for kp, joint in (("left_shoulder", "LShoulder"), ("right_elbow", "RElbow"), ("left_wrist", "LWrist"),
                      ("right_hip", "RHip"), ("left_knee", "LKnee"), ("right_ankle", "RFoot")):  # fmt: skip
        d = (out.keypoints[:, COCO17.index(kp)] - out.joints[:, H36M17.index(joint)]).norm(dim=-1)
        assert d.max() < 0.06, (kp, d)


def test_pose_motion_chunks_match_one_batch(bm, clips):
    motion = clips["135_06"]
    frames = torch.tensor([7, 0, 99, 42, 13])
    ph = bm.sample_phenotypes(5, "synthetic", torch.Generator().manual_seed(7))
    with torch.no_grad():
        chunked = bm.pose_motion(motion, frames, ph, batch_size=2)
        whole = bm(bm.pose_parameters(motion, frames, ph), ph)
    for f in dataclasses.fields(BodyOutput):
        # float32 round-off differs with the batch size (blendshape sums): tenths of a millimetre at most
        torch.testing.assert_close(getattr(chunked, f.name), getattr(whole, f.name), atol=2e-4, rtol=0)


def test_gradients_flow(bm, clips):
    motion = clips["02_03"]
    frames = torch.tensor([0, 30])
    ph = bm.sample_phenotypes(2, "realistic", torch.Generator().manual_seed(8)).requires_grad_()
    pose = bm.pose_parameters(motion, frames, ph)
    pose_leaf = pose.detach().requires_grad_()
    out = bm(pose_leaf, ph)
    (out.vertices.square().mean() + out.joints.sum() + out.keypoints.sum()).backward()
    g = pose_leaf.grad
    assert torch.isfinite(g).all() and g[..., :3, :3].abs().sum() > 0
    assert g[:, 0, :3, 3].abs().sum() > 0  # the root translation
    assert (g[..., 3, :] == 0).all()  # only the top 3x4 block is read
    # phenotype gradient through the mapping (S, root placement) and the forward
    ph.grad = None
    out = bm(bm.pose_parameters(motion, frames, ph), ph)
    out.joints[..., 2].sum().backward()
    assert torch.isfinite(ph.grad).all() and ph.grad.abs().sum() > 0


# --- phenotype sampling -------------------------------------------------------------------------


def test_sample_phenotypes_reproducible_adult_and_domain_specific(bm):
    a = bm.sample_phenotypes(500, "realistic", torch.Generator().manual_seed(11))
    b = bm.sample_phenotypes(500, "realistic", torch.Generator().manual_seed(11))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    s = bm.sample_phenotypes(500, "synthetic", torch.Generator().manual_seed(11))
    for ph in (a, s):
        assert ph.shape == (500, 6) and ph.dtype == torch.float32
        assert (ph >= 0).all() and (ph <= 1).all()
    age = PHENOTYPES.index("age")
    assert s[:, age].min() >= 0.77 + 2 * 0.06 / 46 - 1e-6 and s[:, age].max() <= 0.77 + 32 * 0.06 / 46 + 1e-6
    assert a[:, age].min() >= 0.77 - 1e-6 and a[:, age].max() <= 0.83 + 16 * 0.17 / 46 + 1e-6  # 18-80 years
    # realistic bodies spread wider in build, height and proportions
    for name in ("muscle", "weight", "height", "proportions"):
        k = PHENOTYPES.index(name)
        assert a[:, k].std() > 2 * s[:, k].std(), name
    lo, hi = PHENOTYPE_RANGES["synthetic"]["weight"]
    assert s[:, PHENOTYPES.index("weight")].min() >= lo and s[:, PHENOTYPES.index("weight")].max() <= hi
    # women are drawn shorter on average
    g, h = PHENOTYPES.index("gender"), PHENOTYPES.index("height")
    assert a[a[:, g] < 0.3, h].mean() > a[a[:, g] > 0.7, h].mean()
    # adults: statures within human adult range
    with torch.no_grad():
        rest = bm.rest_vertices(a[:40])
    stature = rest[..., 2].amax(1) - rest[..., 2].amin(1)
    assert stature.min() > 1.4 and stature.max() < 2.05


# --- bad input ----------------------------------------------------------------------------------


def test_bad_inputs(bm, clips):
    motion = clips["05_02"]
    ph2 = torch.full((2, 6), 0.5)
    frames = torch.tensor([0, 1])
    with pytest.raises(TypeError, match="frames"):
        bm.pose_parameters(motion, torch.tensor([0.0, 1.0]), ph2)
    with pytest.raises(TypeError, match="frames"):
        bm.pose_parameters(motion, [0, 1], ph2)
    with pytest.raises(ValueError, match="frames"):
        bm.pose_parameters(motion, torch.tensor([[0, 1]]), ph2)
    with pytest.raises(ValueError, match=r"frames: expected indices in \[0, "):
        bm.pose_parameters(motion, torch.tensor([0, motion.num_frames]), ph2)
    with pytest.raises(ValueError, match="frames"):
        bm.pose_parameters(motion, torch.tensor([-1, 0]), ph2)
    with pytest.raises(ValueError, match="at least one"):
        bm.pose_parameters(motion, torch.tensor([], dtype=torch.long), ph2[:0])
    with pytest.raises(ValueError, match="phenotypes"):
        bm.pose_parameters(motion, frames, torch.full((2, 5), 0.5))
    with pytest.raises(ValueError, match="phenotypes"):
        bm.pose_parameters(motion, frames, torch.full((3, 6), 0.5))
    with pytest.raises(TypeError, match="phenotypes.*float64"):
        bm.pose_parameters(motion, frames, ph2.double())
    with pytest.raises(TypeError, match="motion"):
        bm.pose_parameters("05_02", frames, ph2)
    renamed = dataclasses.replace(motion, joint_names=("Root",) + motion.joint_names[1:])
    with pytest.raises(ValueError, match="CMU31"):
        bm.pose_parameters(renamed, frames, ph2)
    assert isinstance(renamed, Motion)

    pose = torch.eye(4).expand(2, 31, 4, 4)
    with pytest.raises(ValueError, match="pose_parameters"):
        bm(torch.eye(4).expand(2, 30, 4, 4), ph2)
    with pytest.raises(ValueError, match="pose_parameters"):
        bm(pose[..., :3, :], ph2)
    with pytest.raises(ValueError, match="phenotypes"):
        bm(pose, torch.full((3, 6), 0.5))
    with pytest.raises(TypeError, match="pose_parameters"):
        bm(pose.numpy(), ph2)
    with pytest.raises(TypeError, match="phenotypes"):
        bm(pose, torch.ones(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="phenotypes"):
        bm.rest_vertices(torch.full((6,), 0.5))
    with pytest.raises(ValueError, match="batch_size"):
        bm.pose_motion(motion, frames, ph2, batch_size=0)

    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="domain.*synthetic"):
        bm.sample_phenotypes(4, "cartoon", gen)
    with pytest.raises(ValueError, match="n"):
        bm.sample_phenotypes(0, "synthetic", gen)
    with pytest.raises(TypeError, match="n"):
        bm.sample_phenotypes(2.0, "synthetic", gen)
    with pytest.raises(TypeError, match="generator"):
        bm.sample_phenotypes(2, "synthetic", None)
    with pytest.raises(ValueError, match="dtype"):
        body_model("cpu", dtype=torch.float16)
    with pytest.raises(ValueError, match="device"):
        body_model("tpu")
    assert set(BODY_DOMAINS) == set(PHENOTYPE_RANGES)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu(bm, clips):
    gpu = body_model("cuda")
    assert gpu is body_model("cuda") and gpu.device.type == "cuda"
    motion = clips["135_06"]
    frames = torch.tensor([0, 50, 100])
    gen = torch.Generator().manual_seed(9)
    ph_gpu = gpu.sample_phenotypes(3, "realistic", gen)
    ph = ph_gpu.cpu()
    assert ph_gpu.device.type == "cuda"
    with torch.no_grad():
        out_gpu = gpu.pose_motion(motion, frames.cuda(), ph_gpu)
        out = bm.pose_motion(motion, frames, ph)
    assert out_gpu.vertices.device.type == "cuda" and gpu.vertex_regions.device.type == "cuda"
    for f in dataclasses.fields(BodyOutput):
        torch.testing.assert_close(getattr(out_gpu, f.name).cpu(), getattr(out, f.name), atol=1e-4, rtol=0)


# --- skeleton without skinning ------------------------------------------------------------------


def _random_rotations(shape, generator, dtype=torch.float32, scale=1.5):
    """Random rotations ``shape + (3, 3)`` from rotation vectors of about ``scale`` radians."""
    vec = scale * torch.randn(*shape, 3, generator=generator, dtype=torch.float64)
    return torch.linalg.matrix_exp(body_module._skew(vec)).to(dtype)


def _clip_poses(bm, clips, n, seed):
    """(3n, 31, 4, 4) pose parameters of random frames of the test clips, and their (3n, 6) bodies."""
    gen = torch.Generator().manual_seed(seed)
    poses, bodies = [], []
    for motion in clips.values():
        frames = torch.randint(0, motion.num_frames, (n,), generator=gen)
        ph = bm.sample_phenotypes(n, "realistic", gen)
        poses.append(bm.pose_parameters(motion, frames, ph))
        bodies.append(ph)
    return torch.cat(poses).detach(), torch.cat(bodies)


def _skeleton_error(out, sk):
    return max(float((getattr(out, k) - getattr(sk, k)).abs().max()) for k in PosedSkeleton._fields)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_skeleton_matches_forward_on_clips(clips, dtype, tol):
    bm = body_model("cpu", dtype=dtype)
    pose, ph = _clip_poses(bm, clips, 4, seed=20)
    with torch.no_grad():
        out = bm(pose, ph)
        sk = bm.skeleton(pose, ph)
        sk34 = bm.skeleton(pose[:, :, :3], ph)
    assert isinstance(sk, PosedSkeleton) and sk.joints.dtype == dtype
    assert sk.joints.shape == (12, 17, 3) and sk.bone_heads.shape == sk.bone_tails.shape == (12, 31, 3)
    assert _skeleton_error(out, sk) < tol  # measured 5e-7 (float32), 1e-15 (float64)
    for a, b in zip(sk, sk34):  # only the top 3x4 block is read
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_skeleton_matches_forward_for_arbitrary_parameters(dtype, tol):
    """Random rotations on every bone, translations on every bone (Anny reads the children's too),
    and bodies from the whole phenotype cube (children included)."""
    bm = body_model("cpu", dtype=dtype)
    gen = torch.Generator().manual_seed(21)
    pose = torch.eye(4, dtype=dtype).repeat(5, 31, 1, 1)
    pose[..., :3, :3] = _random_rotations((5, 31), gen, dtype)
    pose[..., :3, 3] = 0.2 * torch.randn(5, 31, 3, generator=gen, dtype=dtype)
    pose[:, 0, :3, 3] = 3.0 * torch.randn(5, 3, generator=gen, dtype=dtype)
    ph = torch.rand(5, 6, generator=gen, dtype=torch.float64).to(dtype)
    # the last row of a 4x4 parameter is not read: garbage there changes nothing
    garbage = pose.clone()
    garbage[..., 3, :] = torch.randn(5, 31, 4, generator=gen, dtype=dtype)
    with torch.no_grad():
        out = bm(pose, ph)
        sk = bm.skeleton(garbage, ph)
    assert _skeleton_error(out, sk) < tol  # measured 1e-6 (float32), 2e-15 (float64)


def test_skeleton_known_answers(bm):
    ph = bm.sample_phenotypes(1, "synthetic", torch.Generator().manual_seed(22))
    heads, tails = bm._rest_skeleton(ph)
    identity = torch.eye(4).expand(1, 31, 4, 4)
    sk = bm.skeleton(identity, ph)
    # identity parameters: the rest skeleton with the pelvis moved to the origin
    torch.testing.assert_close(sk.bone_heads, heads - heads[:, :1])
    torch.testing.assert_close(sk.bone_tails, tails - heads[:, :1])
    head, j = bm.bone_names.index("Head"), H36M17.index
    torch.testing.assert_close(sk.joints[:, j("Head")], sk.bone_tails[:, head])
    torch.testing.assert_close(sk.joints[:, j("Neck/Nose")], sk.bone_heads[:, head])
    torch.testing.assert_close(sk.joints[:, j("LKnee")], sk.bone_heads[:, bm.bone_names.index("LeftLeg")])

    # the root parameter [Q | t] turns the whole skeleton about the pelvis and puts the pelvis at t
    Q = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about Z
    t = torch.tensor([1.0, -2.0, 0.5])
    root = identity.clone()
    root[:, 0, :3, :3], root[:, 0, :3, 3] = Q, t
    moved = bm.skeleton(root, ph)
    for a, b in zip(moved, sk):
        torch.testing.assert_close(a, b @ Q.T + t)

    # turning one bone moves that bone's tail and its descendants about its head, nothing else
    c = bm.bone_names.index("LeftForeArm")
    below = {c}
    for k, p in enumerate(bm.parents):
        if p in below:
            below.add(k)
    assert {bm.bone_names[k] for k in below} == {"LeftForeArm", "LeftHand", "LThumb", "LeftFingerBase",
                                                 "LeftHandFinger1"}  # fmt: skip
    bent = identity.clone()
    bent[:, c, :3, :3] = Q
    out = bm.skeleton(bent, ph)
    pivot = sk.bone_heads[:, c]
    turned = torch.tensor([k in below for k in range(31)])
    torch.testing.assert_close(out.bone_tails[:, turned], (sk.bone_tails[:, turned] - pivot) @ Q.T + pivot)
    torch.testing.assert_close(out.bone_heads[:, turned & (torch.arange(31) != c)],
                               (sk.bone_heads[:, turned & (torch.arange(31) != c)] - pivot) @ Q.T + pivot)
    torch.testing.assert_close(out.bone_heads[:, ~turned | (torch.arange(31) == c)],
                               sk.bone_heads[:, ~turned | (torch.arange(31) == c)], atol=0, rtol=0)
    torch.testing.assert_close(out.bone_tails[:, ~turned], sk.bone_tails[:, ~turned], atol=0, rtol=0)
    moved_joints = (out.joints[0] - sk.joints[0]).norm(dim=-1) > 1e-3
    assert moved_joints.nonzero().flatten().tolist() == [j("LWrist")]  # the hand's head


def test_skeleton_gradients_first_and_second_order(clips):
    bm64 = body_model("cpu", dtype=torch.float64)
    pose, ph = _clip_poses(bm64, {"05_02": clips["05_02"]}, 2, seed=23)
    pose, ph = pose[:, :, :3].clone().requires_grad_(), ph.clone().requires_grad_()

    def joints(p, q):
        return bm64.skeleton(p, q).joints

    one = (pose[:1], ph[:1])
    assert torch.autograd.gradcheck(joints, one)
    assert torch.autograd.gradgradcheck(joints, one)
    # every output, two bodies (random projections: fast)
    assert torch.autograd.gradgradcheck(lambda p, q: tuple(bm64.skeleton(p, q)), (pose, ph), fast_mode=True)


def test_skeleton_second_order_matches_forward(clips):
    """A MAML-style quantity (gradient of the gradient's norm) through the skeleton equals the one
    through Anny's full forward."""
    bm64 = body_model("cpu", dtype=torch.float64)
    pose, ph = _clip_poses(bm64, {"135_06": clips["135_06"]}, 2, seed=24)
    target = torch.randn(2, 17, 3, generator=torch.Generator().manual_seed(25), dtype=torch.float64)

    def meta_gradients(fn):
        p, q = pose.clone().requires_grad_(), ph.clone().requires_grad_()
        loss = (fn(p, q).joints - target).square().sum()
        g_pose, g_ph = torch.autograd.grad(loss, (p, q), create_graph=True)
        return torch.autograd.grad(g_pose.square().sum() + g_ph.square().sum(), (p, q))

    ours, anny = meta_gradients(bm64.skeleton), meta_gradients(bm64.forward)
    for a, b in zip(ours, anny):
        assert b.abs().max() > 1e-3
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_skeleton_vmap_over_pose_with_a_shared_body(bm, clips):
    from torch.func import grad, vmap

    pose, ph = _clip_poses(bm, {"02_03": clips["02_03"]}, 4, seed=26)
    one = ph[:1]  # one body for every pose
    with torch.no_grad():
        batched = bm.skeleton(pose, one.expand(4, 6))
    mapped = vmap(lambda p: bm.skeleton(p[None], one))(pose)
    assert isinstance(mapped, PosedSkeleton)  # a NamedTuple: a pytree that vmap can return
    for a, b in zip(mapped, batched):
        torch.testing.assert_close(a[:, 0], b)
    mapped_none = vmap(lambda p, q: bm.skeleton(p[None], q).joints[0], in_dims=(0, None))(pose, one)
    torch.testing.assert_close(mapped_none, batched.joints)

    # per-sample gradients with vmap(grad) equal the batched gradient of the summed loss
    def loss(p, q):
        return bm.skeleton(p[None], q).joints.square().sum()

    per_pose = vmap(grad(loss), in_dims=(0, None))(pose, one)
    per_body = vmap(grad(loss, argnums=1), in_dims=(0, None))(pose, one)
    p, q = pose.clone().requires_grad_(), one.expand(4, 6).clone().requires_grad_()
    bm.skeleton(p, q).joints.square().sum().backward()
    torch.testing.assert_close(per_pose, p.grad)
    torch.testing.assert_close(per_body[:, 0], q.grad)

    # anny's phenotype code writes in place: vmapping over the bodies fails (batch them natively)
    with pytest.raises(RuntimeError, match="vmap"):
        vmap(lambda p, q: bm.skeleton(p[None], q[None]).joints[0])(pose, ph)


def test_skeleton_bad_inputs(bm):
    ph = torch.full((2, 6), 0.5)
    pose = torch.eye(4).expand(2, 31, 4, 4)
    for bad in (torch.eye(4).expand(2, 30, 4, 4), pose[..., :2, :], pose[..., :3], pose[0], pose[None]):
        with pytest.raises(ValueError, match=r"pose_parameters: expected shape \(B, 31, 4, 4\) or \(B, 31, 3, 4\)"):
            bm.skeleton(bad, ph)
    with pytest.raises(TypeError, match="pose_parameters"):
        bm.skeleton(pose.numpy(), ph)
    with pytest.raises(TypeError, match="pose_parameters.*float64"):
        bm.skeleton(pose.double(), ph)
    with pytest.raises(TypeError, match="pose_parameters"):
        bm.skeleton(pose.long(), ph)
    with pytest.raises(ValueError, match="phenotypes"):
        bm.skeleton(pose, torch.full((3, 6), 0.5))
    with pytest.raises(ValueError, match="phenotypes"):
        bm.skeleton(pose[:, :, :3], torch.full((2, 5), 0.5))
    with pytest.raises(TypeError, match="phenotypes"):
        bm.skeleton(pose, ph.double())


# --- pose parameters in a camera frame -------------------------------------------------------------


def test_to_camera_frame_structure_and_identity():
    gen = torch.Generator().manual_seed(27)
    pose = torch.randn(3, 31, 4, 4, generator=gen)
    R, T = _random_rotations((3,), gen), torch.randn(3, 3, generator=gen)
    out = to_camera_frame(pose, R, T)
    assert out.shape == pose.shape and out.dtype == pose.dtype
    torch.testing.assert_close(out[:, 1:], pose[:, 1:], atol=0, rtol=0)  # only the root changes
    torch.testing.assert_close(out[:, 0, 3], pose[:, 0, 3], atol=0, rtol=0)  # its last row is kept
    torch.testing.assert_close(out[:, 0, :3, :3], R @ pose[:, 0, :3, :3])
    torch.testing.assert_close(out[:, 0, :3, 3], (R @ pose[:, 0, :3, 3:])[..., 0] + T)
    torch.testing.assert_close(to_camera_frame(pose[:, :, :3], R, T), out[:, :, :3])  # 3x4 in, 3x4 out
    eye = torch.eye(3).expand(3, 3, 3)
    torch.testing.assert_close(to_camera_frame(pose, eye, torch.zeros(3, 3)), pose, atol=0, rtol=0)
    # two changes of frame compose: (R2, T2) after (R1, T1) is (R2 R1, R2 T1 + T2)
    R2, T2 = _random_rotations((3,), gen), torch.randn(3, 3, generator=gen)
    twice = to_camera_frame(to_camera_frame(pose, R, T), R2, T2)
    torch.testing.assert_close(twice, to_camera_frame(pose, R2 @ R, (R2 @ T[..., None])[..., 0] + T2))
    # differentiable in all three inputs
    args = tuple(x.double().requires_grad_() for x in (pose[:2, :, :3], R[:2], T[:2]))
    assert torch.autograd.gradcheck(to_camera_frame, args)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_to_camera_frame_is_equivariant(clips, dtype, tol):
    bm = body_model("cpu", dtype=dtype)
    pose, ph = _clip_poses(bm, {"05_02": clips["05_02"]}, 3, seed=28)
    gen = torch.Generator().manual_seed(29)
    R = _random_rotations((3,), gen, dtype)
    T = torch.randn(3, 3, generator=gen, dtype=torch.float64).to(dtype) + torch.tensor([0.0, 0.0, 5.0], dtype=dtype)
    with torch.no_grad():
        world = bm(pose, ph)
        cam = bm(to_camera_frame(pose, R, T), ph)
        sk = bm.skeleton(to_camera_frame(pose[:, :, :3], R, T), ph)
    for f in dataclasses.fields(BodyOutput):  # vertices, joints, keypoints, bone ends
        expected = torch.einsum("bij,bnj->bni", R, getattr(world, f.name)) + T[:, None]
        # Anny's COCO regressor weights sum to 1 only to 1.3e-7, and its float32 sums over 13,718
        # vertices some 5 m from the camera round off to 1e-4 m: a looser bound for the keypoints.
        atol = tol if f.name != "keypoints" else {torch.float32: 5e-4, torch.float64: 2e-6}[dtype]
        torch.testing.assert_close(getattr(cam, f.name), expected, atol=atol, rtol=0)
    assert _skeleton_error(cam, sk) < tol


def test_to_camera_frame_gives_the_rendered_camera_joints():
    from poselab.data.images import render_image_set

    images = render_image_set("train", "synthetic", 8, 64, seed=0, progress=False)
    bm = body_model("cpu")
    assert images.pose.shape == (8, 31, 3, 4)
    with torch.no_grad():
        sk = bm.skeleton(to_camera_frame(images.pose, images.rotation, images.translation), images.phenotypes)
        world = bm.skeleton(images.pose, images.phenotypes)
    assert (sk.joints - images.joints_cam).abs().max() < 1e-4  # measured 5e-7 m
    assert (world.joints - images.joints_cam).abs().max() > 1.0  # the world frame is not the camera's
    projected = sk.joints[..., :2] / sk.joints[..., 2:] * images.focal[:, None] + images.center[:, None]
    assert (projected - images.joints).abs().max() < 1e-3  # crop pixels


def test_to_camera_frame_bad_inputs():
    pose, R, T = torch.eye(4).expand(2, 31, 4, 4), torch.eye(3).expand(2, 3, 3), torch.zeros(2, 3)
    for bad in (pose[:, :30], pose[..., :3], pose[0]):
        with pytest.raises(ValueError, match=r"pose_parameters: expected shape \(B, 31, 4, 4\) or \(B, 31, 3, 4\)"):
            to_camera_frame(bad, R, T)
    with pytest.raises(ValueError, match=r"rotation: expected shape \(2, 3, 3\)"):
        to_camera_frame(pose, R[:1], T)
    with pytest.raises(ValueError, match="rotation"):
        to_camera_frame(pose, torch.eye(3), T)
    with pytest.raises(ValueError, match=r"translation: expected shape \(2, 3\)"):
        to_camera_frame(pose, R, T[:, None])
    with pytest.raises(TypeError, match="translation.*float64"):
        to_camera_frame(pose, R, T.double())
    with pytest.raises(TypeError, match="rotation.*floating"):
        to_camera_frame(pose, R.long(), T)
    with pytest.raises(TypeError, match="translation: expected a torch.Tensor"):
        to_camera_frame(pose, R, [0.0, 0.0, 0.0])
    with pytest.raises(TypeError, match="pose_parameters: expected a torch.Tensor"):
        to_camera_frame(pose.numpy(), R, T)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_skeleton_and_camera_frame(bm, clips):
    gpu = body_model("cuda")
    pose, ph = _clip_poses(bm, {"135_06": clips["135_06"]}, 3, seed=30)
    gen = torch.Generator().manual_seed(31)
    R, T = _random_rotations((3,), gen), torch.randn(3, 3, generator=gen)
    cam = to_camera_frame(pose.cuda(), R.cuda(), T.cuda())
    assert cam.device.type == "cuda"
    with torch.no_grad():
        sk_gpu = gpu.skeleton(cam, ph.cuda())
        out_gpu = gpu(cam, ph.cuda())
        sk = bm.skeleton(to_camera_frame(pose, R, T), ph)
    assert sk_gpu.joints.device.type == "cuda"
    assert _skeleton_error(out_gpu, sk_gpu) < 1e-5
    for a, b in zip(sk_gpu, sk):
        torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="device"):
        gpu.skeleton(pose, ph.cuda())
    with pytest.raises(ValueError, match="translation: on device"):
        to_camera_frame(pose, R, T.cuda())
