"""Anny body meshes driven by the CMU clips.

The body model is Anny (``anny.Anny(rig="cmu_mb", skinning_method="lbs")``, 13,718 vertices,
27,420 triangles), whose ``cmu_mb`` rig has the 31 bones of the CMU BVH skeleton. Its body
shape is set by six phenotype values in [0, 1] (:data:`PHENOTYPES`, Anny's order); its pose by
one rotation per bone, which this module computes from a CMU clip.

Frames and units
----------------
* **Anny world frame**: metres, Z up, the body faces -Y, the body's left is +X. Every posed
  output (:class:`BodyOutput`) is in this frame. Anny's own rest pose (:meth:`BodyModel.rest_vertices`)
  uses the same axes, with the origin near the pelvis.
* **BVH frame** (:mod:`poselab.data.mocap`): metres (``mocap`` already converts the CMU unit,
  1 unit = 0.05644 m), Y up, the subject faces +Z in the zero pose, left is +X. The change of
  axes is ``C = Rx(+90 deg)``: ``(x, y, z)_bvh -> (x, -z, y)_anny``.
* Bone order: Anny's (``BodyModel.bone_names``), not the BVH file order. Bones are matched by
  name; the only renamed ones are the BVH ``LeftHandIndex1``/``RightHandIndex1``, called
  ``LeftHandFinger1``/``RightHandFinger1`` in Anny.

From the CMU zero pose to Anny's rest pose
------------------------------------------
A BVH local rotation ``L_c`` turns joint ``c`` relative to its parent, starting from the
*zero pose*, in which every joint's world rotation is the identity and every segment points
along its OFFSET: the subject stands upright facing +Z with the arms stretched out sideways
(a T-pose), the legs slightly apart and angled outwards, the clavicles and pelvis-to-hip
segments set by the subject's calibration. Anny's pose parameters turn bones away from
*Anny's* rest pose instead, which is an A-pose (arms some 45 degrees down) with its own leg
angles, and whose bone directions change with the phenotype.

Anny's pose parameter ``D_c`` for bone ``c`` is also a rotation relative to the parent,
expressed in world-aligned axes: the bone's world rotation change is ``G_c = G_parent D_c``
(and ``G_root = D_root``), and the posed bone direction is ``G_c a_c`` with ``a_c`` the rest
head-to-tail vector. Feeding ``C L_c C^T`` in directly would apply the CMU motion to the
A-pose, so raised CMU arms would come out 45 degrees too low. The mapping therefore puts a
fixed world rotation ``S_c`` in front of the motion: ``G_c = (C W_c C^T) S_c``, where ``W_c``
is the BVH world rotation. ``S_c`` first carries Anny's rest bone onto the CMU zero-pose
segment, then the CMU motion moves it. Solving for the local parameters gives::

    D_root = C L_root C^T,        D_c = S_parent^T (C L_c C^T) S_c.

``S`` is built from the root down (``S_root = I``). For each of the 12 limb bones
(:data:`LIMB_BONES`: upper arm, forearm, thigh, shin, foot, toe on each side),
``S_c = swing(S_parent a_c -> o_c) S_parent``, where ``o_c`` is the BVH zero-pose segment in
Anny's axes (the child's OFFSET, or the End Site for the toes) and ``swing`` is the smallest
rotation taking one direction onto another (no twist about the bone). Every other bone
inherits its parent's correction unchanged (``S_c = S_parent``): the spine, neck and head keep
Anny's natural curvature and follow the BVH torso and head orientation up to a constant rest
offset, and the clavicles, pelvis-to-hip bones and hand stubs keep Anny's anatomical shape. Those
BVH segments carry no motion in the CMU data (their channels are zero) or are not anatomical
(thumb and finger stubs), and swinging them would warp the pelvis, shrug the shoulders and
straighten the spine. With this choice the 12 limb directions of the posed mesh equal the
BVH directions exactly (to float round-off).

``S`` depends on the phenotype, because Anny's rest bone directions change with the body
shape, so it is computed for every body from its rest bone heads and tails.

Root translation: the two skeletons have different sizes and pelvis heights, so the BVH root
position is scaled by ``s = Anny leg length / BVH leg length`` (thigh + shin, mean of both
sides) and Anny's *hip midpoint* (the midpoint of the two hip joints) is placed at ``s C`` times
the BVH hip midpoint. The pose parameter's root translation is the world position of the pelvis
(Anny's root bone head), so ``d_root = s C (p_root + L_root m_bvh) - D_root m_anny`` with ``m``
the rest offset from the pelvis to the hip midpoint in each skeleton. Feet then meet the floor
(BVH ``y = 0`` -> Anny ``z = 0``) within a few cm on ground-level clips.

Accuracy (``tests/test_body.py``, float32, random realistic bodies): the 12 limb directions match
the BVH to under 1e-3 degrees; the facing direction to under 0.1 degree; joints relative to the hip
midpoint, with the BVH scaled by the leg-length ratio, differ by 7-9 cm on average. That residual is
body proportions (Anny's neck and head sit higher above the hips, its shoulders and pelvis centre
elsewhere than the CMU subject's), not pose: use Anny's joints or keypoints as labels, not the BVH's.

Outputs
-------
* vertices (Anny's linear blend skinning);
* 17 joints in the :data:`~poselab.data.skeleton.H36M17` layout, taken from Anny's posed bone
  heads at the same anatomical points as :data:`~poselab.data.skeleton.CMU_TO_H36M` picks from
  the BVH (the head top is the ``Head`` bone's tail);
* 17 COCO keypoints (:data:`~poselab.data.skeleton.COCO17` order) from Anny's keypoint regressor
  (a fixed linear combination of vertices, so differentiable);
* the posed bone heads and tails.

:meth:`BodyModel.skeleton` gives the joints and the posed bone heads and tails without skinning the
mesh: forward kinematics on each body's rest skeleton, equal to :meth:`BodyModel.forward`'s to float
round-off and over ten times cheaper, for losses on joints only (differentiable to any order; see its
docstring for ``torch.func.vmap``). :func:`to_camera_frame` rewrites the root's pose parameter so
that Anny's outputs come out in a camera frame instead of Anny's world frame: Anny is equivariant, so
changing the root alone moves every posed point ``p`` to ``R p + T``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import torch

from poselab.checks import check_choice, check_int, check_shape, resolve_device
from poselab.data.mocap import Motion, forward_kinematics
from poselab.data.skeleton import CMU31, CMU_HEAD_TOP, CMU_TO_H36M, COCO17

__all__ = [
    "BODY_DOMAINS",
    "REGIONS",
    "PHENOTYPES",
    "LIMB_BONES",
    "PHENOTYPE_RANGES",
    "BodyModel",
    "BodyOutput",
    "PosedSkeleton",
    "body_model",
    "bvh_in_anny_frame",
    "bvh_to_anny_axes",
    "to_camera_frame",
]

BODY_DOMAINS = ("synthetic", "realistic")
"""Body-shape domains of :meth:`BodyModel.sample_phenotypes` (see :data:`PHENOTYPE_RANGES`)."""

REGIONS = ("head", "hands", "arms", "torso", "legs", "feet")
"""Clothing regions of :attr:`BodyModel.vertex_regions`, from each vertex's dominant skinning bone:
head <- Neck, Neck1, Head; hands <- Hand, FingerBase, HandFinger1, Thumb; arms <- Arm, ForeArm;
torso <- LowerBack, Spine, Spine1, the clavicles (LeftShoulder, RightShoulder); legs <- UpLeg, Leg and
the pelvis bones (Hips, LHipJoint, RHipJoint, which skin the buttocks and groin: the part a pair of
trousers covers); feet <- Foot, ToeBase."""

PHENOTYPES = ("gender", "age", "muscle", "weight", "height", "proportions")
"""Anny's phenotype values, in Anny's order; each in [0, 1] (values outside are clamped by Anny).
``gender``: 0 male, 1 female. ``age``: 0 newborn, about 0.77 = 18 years, 0.83 = 64 years, 1 = 110
years. ``muscle``, ``weight``: minimum to maximum. ``height``: minimum to maximum stature (at
adult age and ``gender`` 0 about 1.35 m to 2.44 m, ``gender`` 1 about 1.22 m to 2.31 m).
``proportions``: 0 ideal, 1 uncommon."""

LIMB_BONES = tuple(
    f"{side}{part}" for side in ("Left", "Right") for part in ("Arm", "ForeArm", "UpLeg", "Leg", "Foot", "ToeBase")
)
"""The 12 bones whose rest direction is swung onto the BVH zero pose (see the module docstring)."""

_BVH_TO_ANNY_NAME = {"LeftHandIndex1": "LeftHandFinger1", "RightHandIndex1": "RightHandFinger1"}

_REGION_OF_BONE = {
    "head": ("Neck", "Neck1", "Head"),
    "hands": ("LeftHand", "LeftFingerBase", "LeftHandFinger1", "LThumb",
              "RightHand", "RightFingerBase", "RightHandFinger1", "RThumb"),
    "arms": ("LeftArm", "LeftForeArm", "RightArm", "RightForeArm"),
    "torso": ("LowerBack", "Spine", "Spine1", "LeftShoulder", "RightShoulder"),
    "legs": ("Hips", "LHipJoint", "RHipJoint", "LeftUpLeg", "LeftLeg", "RightUpLeg", "RightLeg"),
    "feet": ("LeftFoot", "LeftToeBase", "RightFoot", "RightToeBase"),
}  # fmt: skip

# Per-domain phenotype distributions: independent uniforms (low, high). ``age`` is in years and
# mapped to Anny's age value with Anny's calibration (18 y -> 0.77, 64 y -> 0.83, 110 y -> 1.0).
# ``height`` is drawn around a gender-dependent centre, 0.39 - 0.045 * gender (the mean of Anny's
# adult height calibration for men, 0.39, and for women, 0.345), plus U(low, high).
PHENOTYPE_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "synthetic": {
        "gender": (0.0, 1.0),
        "age_years": (20.0, 50.0),
        "muscle": (0.35, 0.65),
        "weight": (0.35, 0.65),
        "height_offset": (-0.06, 0.06),
        "proportions": (0.4, 0.6),
    },
    "realistic": {
        "gender": (0.0, 1.0),
        "age_years": (18.0, 80.0),
        "muscle": (0.0, 1.0),
        "weight": (0.0, 1.0),
        "height_offset": (-0.18, 0.18),
        "proportions": (0.0, 1.0),
    },
}
"""Phenotype distributions of :meth:`BodyModel.sample_phenotypes`: independent uniforms ``(low, high)``.

* ``gender`` U(0, 1) in both domains (a continuous male-female blend).
* ``age_years``: adults only, synthetic 20-50 years, realistic 18-80 years; converted to Anny's
  age value with Anny's own calibration (18 y -> 0.77, 64 y -> 0.83, 110 y -> 1.0, linear between).
* ``muscle``, ``weight``: synthetic U(0.35, 0.65) (average builds), realistic U(0, 1) (thin to heavy,
  slight to muscular).
* ``height`` = ``0.39 - 0.045 * gender + height_offset``, the centre being the mean of Anny's adult
  height calibration for men (0.39, about 1.78 m) and women (0.345, about 1.60 m); the offset is
  synthetic U(-0.06, 0.06) (about +-7 cm) and realistic U(-0.18, 0.18) (about +-20 cm).
* ``proportions``: synthetic U(0.4, 0.6), realistic U(0, 1) (ideal to uncommon proportions).

Resulting statures (rest mesh, sole to crown; 400 draws each): synthetic 1.53-1.84 m, realistic
1.44-1.98 m.
"""

_HEIGHT_CENTRE = (0.39, -0.045)  # height centre = 0.39 - 0.045 * gender
_AGE_ANCHORS = ((18.0, 0.77), (64.0, 0.83), (110.0, 1.0))  # (years, Anny age value), Anny's calibration


def bvh_to_anny_axes(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(3, 3)`` matrix ``C`` taking BVH axes (Y up, facing +Z) to Anny's (Z up, facing -Y):
    ``(x, y, z) -> (x, -z, y)``, a +90 degree rotation about X."""
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------
# Output


@dataclass
class BodyOutput:
    """Posed bodies, in Anny's world frame (metres, Z up, facing -Y).

    Attributes:
        vertices: ``(B, V, 3)`` mesh vertices (``V = 13718``; faces in :attr:`BodyModel.faces`).
        joints: ``(B, 17, 3)`` :data:`~poselab.data.skeleton.H36M17` joints from the posed bone heads
            (the ``Head`` joint, top of the head, is the ``Head`` bone's tail).
        keypoints: ``(B, 17, 3)`` :data:`~poselab.data.skeleton.COCO17` keypoints (Anny's regressor).
        bone_heads: ``(B, 31, 3)`` posed bone heads, in Anny's bone order (:attr:`BodyModel.bone_names`).
        bone_tails: ``(B, 31, 3)`` posed bone tails, same order.
    """

    vertices: torch.Tensor
    joints: torch.Tensor
    keypoints: torch.Tensor
    bone_heads: torch.Tensor
    bone_tails: torch.Tensor

    @property
    def batch_size(self) -> int:
        """Number of bodies ``B``."""
        return int(self.vertices.shape[0])

    @staticmethod
    def cat(outputs: list[BodyOutput]) -> BodyOutput:
        """Concatenate outputs along the batch dimension."""
        if not outputs:
            raise ValueError("outputs: expected at least one BodyOutput, got none")
        return BodyOutput(**{f.name: torch.cat([getattr(o, f.name) for o in outputs]) for f in fields(BodyOutput)})


class PosedSkeleton(NamedTuple):
    """Posed skeletons without the mesh (:meth:`BodyModel.skeleton`), in the frame of the pose
    parameters' root (Anny's world frame, or a camera frame after :func:`to_camera_frame`), metres.

    A ``NamedTuple`` rather than a dataclass so that ``torch.func`` transforms (``vmap``,
    ``jacrev``) can return it: named tuples are pytrees.

    Attributes:
        joints: ``(B, 17, 3)`` :data:`~poselab.data.skeleton.H36M17` joints, as :attr:`BodyOutput.joints`.
        bone_heads: ``(B, 31, 3)`` posed bone heads, Anny's bone order (:attr:`BodyModel.bone_names`).
        bone_tails: ``(B, 31, 3)`` posed bone tails, same order.
    """

    joints: torch.Tensor
    bone_heads: torch.Tensor
    bone_tails: torch.Tensor


# ---------------------------------------------------------------------------------------------
# The model


def _skew(v: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` -> ``(..., 3, 3)`` cross-product matrices ``[v]x``."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).unflatten(-1, (3, 3))


def _swing(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Smallest rotation taking direction ``a`` onto direction ``b`` (batched, differentiable).

    ``a``, ``b``: ``(..., 3)`` non-zero vectors (broadcast), normalised here. Returns ``(..., 3, 3)``
    ``R = I + [v]x + [v]x^2 / (1 + a.b)`` with ``v = a x b``; undefined for opposite directions.
    """
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    a, b = torch.broadcast_tensors(a, b)
    k = _skew(torch.linalg.cross(a, b))
    cos = (a * b).sum(-1)[..., None, None]
    eye = torch.eye(3, dtype=a.dtype, device=a.device)
    return eye + k + (k @ k) / (1.0 + cos)


class BodyModel:
    """Anny with the ``cmu_mb`` rig, on one device and dtype; get it from :func:`body_model`.

    Attributes:
        faces: ``(F, 3)`` long triangle vertex indices (``F = 27420``).
        num_vertices: ``V = 13718``.
        vertex_regions: ``(V,)`` long index into :data:`REGIONS` (from each vertex's dominant skinning bone).
        bone_names: the 31 bone names in Anny's order (the order of every ``(..., 31, ...)`` tensor here).
        device, dtype: where the model lives; every tensor passed in must match them.
    """

    def __init__(self, anny_model, keypoint_regressor) -> None:
        self._anny = anny_model
        self._keypoints = keypoint_regressor
        ref = anny_model.template_vertices
        self.device: torch.device = ref.device
        self.dtype: torch.dtype = ref.dtype
        self.faces: torch.Tensor = anny_model.faces.to(device=self.device, dtype=torch.long)
        self.num_vertices: int = int(ref.shape[0])
        self.bone_names: tuple[str, ...] = tuple(anny_model.bone_labels)
        self.parents: tuple[int, ...] = tuple(int(p) for p in anny_model.bone_parents)

        # Anny bone -> CMU31 joint, by name; check that both hierarchies agree.
        anny_of_bvh = {n: _BVH_TO_ANNY_NAME.get(n, n) for n in CMU31.joint_names}
        bvh_of_anny = {a: b for b, a in anny_of_bvh.items()}
        if set(self.bone_names) != set(bvh_of_anny):
            raise RuntimeError(
                f"Anny's cmu_mb rig has bones {sorted(self.bone_names)}, expected the CMU31 joints "
                f"{sorted(bvh_of_anny)}; is the installed anny version supported (0.6.2)?"
            )
        bvh_index = [CMU31.index(bvh_of_anny[n]) for n in self.bone_names]
        for c, p in enumerate(self.parents):
            bvh_parent = CMU31.parents[bvh_index[c]]
            if (p < 0) != (bvh_parent < 0) or (p >= 0 and bvh_index[p] != bvh_parent):
                raise RuntimeError(f"Anny bone {self.bone_names[c]!r} has a different parent than in the CMU skeleton")
            if p >= c:
                raise RuntimeError("Anny's bones are expected in topological order (parent before child)")
        self._bvh_index = bvh_index  # (31,) CMU31 index of each Anny bone
        self._bvh_index_t = torch.tensor(bvh_index, dtype=torch.long)
        self._is_limb = [n in LIMB_BONES for n in self.bone_names]
        self._parent_or_root = torch.tensor([max(p, 0) for p in self.parents], device=self.device)
        self._bone = {n: i for i, n in enumerate(self.bone_names)}

        # H36M17 joints: the CMU31 points of CMU_TO_H36M, as Anny bone heads (head top: Head tail).
        head_bone = self._bone["Head"]
        self._joint_index = torch.tensor(
            [len(self.bone_names) if s == CMU_HEAD_TOP else bvh_index.index(s) for s in CMU_TO_H36M],
            device=self.device,
        )
        self._head_bone = head_bone

        # Forward kinematics by depth level (10 levels for 31 bones): the bones of each level, each
        # one's parent's position within the level before, and the permutation back to bone order.
        depth = [0] * len(self.parents)
        for c in range(1, len(self.parents)):
            depth[c] = depth[self.parents[c]] + 1
        levels = [[c for c in range(len(depth)) if depth[c] == k] for k in range(max(depth) + 1)]
        self._fk_levels = [
            (torch.tensor(level, device=self.device),
             torch.tensor([levels[k - 1].index(self.parents[c]) for c in level], device=self.device))
            for k, level in enumerate(levels) if k > 0
        ]  # fmt: skip
        self._fk_inverse = torch.argsort(torch.tensor([c for level in levels for c in level])).to(self.device)

        # Clothing regions from the dominant skinning bone.
        region_of_bone = torch.empty(len(self.bone_names), dtype=torch.long)
        for r, region in enumerate(REGIONS):
            for name in _REGION_OF_BONE[region]:
                region_of_bone[self._bone[name]] = r
        assert sum(len(v) for v in _REGION_OF_BONE.values()) == len(self.bone_names)
        dominant = anny_model.dense_vertex_bone_weights.argmax(dim=1).cpu()
        self.vertex_regions: torch.Tensor = region_of_bone[dominant].to(self.device)

    def __repr__(self) -> str:
        return f"BodyModel(anny cmu_mb, V={self.num_vertices}, F={self.faces.shape[0]}, {self.device}, {self.dtype})"

    # -- argument checks ------------------------------------------------------------------------

    def _check_tensor(self, arg: str, x, shape: tuple) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{arg}: expected a torch.Tensor, got {type(x).__name__}")
        check_shape(arg, x, shape)
        if not x.is_floating_point():
            raise TypeError(f"{arg}: expected a floating-point tensor ({self.dtype}), got {x.dtype}")
        if x.dtype != self.dtype:
            raise TypeError(
                f"{arg}: dtype {x.dtype} does not match the body model's {self.dtype}; convert it "
                f"({arg}.to({self.dtype})) or use body_model(dtype={x.dtype})"
            )
        if x.device != self.device:
            raise ValueError(
                f"{arg}: on device {x.device} but the body model is on {self.device}; move it "
                f"({arg}.to(model.device)) or use body_model(device={str(x.device)!r})"
            )

    def _check_pose(self, pose_parameters) -> None:
        """``(B, 31, 4, 4)`` or ``(B, 31, 3, 4)`` pose parameters in the model's dtype and device."""
        n = len(self.bone_names)
        if isinstance(pose_parameters, torch.Tensor) and tuple(pose_parameters.shape[1:]) not in ((n, 4, 4), (n, 3, 4)):
            raise ValueError(
                f"pose_parameters: expected shape (B, {n}, 4, 4) or (B, {n}, 3, 4), got {tuple(pose_parameters.shape)}"
            )
        self._check_tensor("pose_parameters", pose_parameters, ("B", n, None, 4))

    @staticmethod
    def _check_motion(motion) -> None:
        if not isinstance(motion, Motion):
            raise TypeError(f"motion: expected a poselab.data.mocap.Motion, got {type(motion).__name__}")
        if tuple(motion.joint_names) != CMU31.joint_names:
            raise ValueError(
                f"motion {motion.name!r}: expected the 31 CMU31 joints in file order, got {len(motion.joint_names)} "
                f"joints starting {list(motion.joint_names[:4])}"
            )
        for name in ("LeftToeBase", "RightToeBase"):
            if CMU31.index(name) not in motion.end_sites:
                raise ValueError(f"motion {motion.name!r}: expected an End Site on {name!r} (toe tip), found none")

    @staticmethod
    def _check_frames(motion: Motion, frames) -> torch.Tensor:
        if not isinstance(frames, torch.Tensor):
            raise TypeError(
                f"frames: expected a 1-D integer torch.Tensor of frame indices, got {type(frames).__name__}"
            )
        if frames.dtype.is_floating_point or frames.dtype.is_complex or frames.dtype == torch.bool:
            raise TypeError(f"frames: expected an integer tensor (torch.long), got {frames.dtype}")
        check_shape("frames", frames, ("T",))
        if frames.numel() == 0:
            raise ValueError("frames: expected at least one frame index, got an empty tensor")
        frames = frames.to(device="cpu", dtype=torch.long)
        low, high = int(frames.min()), int(frames.max())
        if low < 0 or high >= motion.num_frames:
            raise ValueError(
                f"frames: expected indices in [0, {motion.num_frames - 1}] (clip {motion.name!r} has "
                f"{motion.num_frames} frames), got values in [{low}, {high}]"
            )
        return frames

    # -- rest shape -----------------------------------------------------------------------------

    def _blendshape_coefficients(self, phenotypes: torch.Tensor) -> torch.Tensor:
        # The one place that uses a private anny function: Anny's public forward always skins the
        # whole mesh, while the mapping only needs the rest skeleton (31 heads and tails), and
        # textures only the rest vertices. anny 0.6.2 has no public phenotype -> coefficients call
        # taking a (B, 6) tensor (get_phenotype_blendshape_coefficients is deprecated and keyword-based).
        empty = phenotypes.new_zeros((phenotypes.shape[0], 0))
        return self._anny._get_phenotype_blendshape_coefficients(phenotypes, empty, empty)

    def _rest_skeleton(self, phenotypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 31, 3)`` rest bone heads and tails (Anny's rest coordinates) for ``(B, 6)`` phenotypes."""
        coeffs = self._blendshape_coefficients(phenotypes)
        m = self._anny
        heads = m.template_bone_heads + torch.einsum("ba,akd->bkd", coeffs, m.bone_heads_blendshapes)
        tails = m.template_bone_tails + torch.einsum("ba,akd->bkd", coeffs, m.bone_tails_blendshapes)
        return heads, tails

    def rest_vertices(self, phenotypes: torch.Tensor) -> torch.Tensor:
        """Anny's rest-pose (A-pose) vertices of each body, for textures that follow the body.

        Args:
            phenotypes: ``(B, 6)`` values in [0, 1], :data:`PHENOTYPES` order, model dtype/device.

        Returns:
            ``(B, V, 3)`` metres, Anny's rest coordinates (Z up, facing -Y, origin near the pelvis,
            soles near ``z = -0.8`` for an average body); differentiable in ``phenotypes``.
        """
        self._check_tensor("phenotypes", phenotypes, ("B", len(PHENOTYPES)))
        return self._anny.get_rest_vertices(self._blendshape_coefficients(phenotypes))

    def sample_phenotypes(self, n: int, domain: str, generator: torch.Generator) -> torch.Tensor:
        """Draw ``n`` adult body shapes from the ``domain``'s distribution (:data:`PHENOTYPE_RANGES`).

        Uniforms are drawn in float64 on ``generator``'s device, then converted to the model's
        dtype and device: the same generator state gives the same bodies on any model.

        Args:
            n: number of bodies, >= 1.
            domain: one of :data:`BODY_DOMAINS`.
            generator: the source of randomness.

        Returns:
            ``(n, 6)`` phenotype values in [0, 1], :data:`PHENOTYPES` order.
        """
        check_int("n", n)
        check_choice("domain", domain, BODY_DOMAINS)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        ranges = PHENOTYPE_RANGES[domain]
        u = torch.rand((n, 6), generator=generator, device=generator.device, dtype=torch.float64)
        keys = ("gender", "age_years", "muscle", "weight", "height_offset", "proportions")
        low = u.new_tensor([ranges[k][0] for k in keys])
        high = u.new_tensor([ranges[k][1] for k in keys])
        draw = low + (high - low) * u
        gender, years, muscle, weight, offset, proportions = draw.unbind(-1)
        (y0, a0), (y1, a1), (y2, a2) = _AGE_ANCHORS
        age = torch.where(
            years <= y1, a0 + (years - y0) * (a1 - a0) / (y1 - y0), a1 + (years - y1) * (a2 - a1) / (y2 - y1)
        )
        height = _HEIGHT_CENTRE[0] + _HEIGHT_CENTRE[1] * gender + offset
        out = torch.stack([gender, age, muscle, weight, height, proportions], dim=-1).clamp(0.0, 1.0)
        return out.to(device=self.device, dtype=self.dtype)

    # -- pose -----------------------------------------------------------------------------------

    def pose_parameters(self, motion: Motion, frames: torch.Tensor, phenotypes: torch.Tensor) -> torch.Tensor:
        """Anny pose parameters that put each body in the pose of ``motion`` at ``frames``.

        The mapping of the module docstring: limbs-only swing corrections ``S`` computed for each
        body, local rotations ``D_c = S_p^T (C L_c C^T) S_c``, root translation placing Anny's hip
        midpoint at the leg-length-scaled BVH hip midpoint. Vectorised over frames (a loop over the
        31 bones only); differentiable in ``phenotypes``.

        Args:
            motion: a CMU31 clip (:func:`poselab.data.mocap.load_clip`).
            frames: ``(T,)`` integer frame indices in ``[0, motion.num_frames)`` (any device).
            phenotypes: ``(T, 6)`` body shapes, one per frame, model dtype/device.

        Returns:
            ``(T, 31, 4, 4)`` homogeneous transforms in Anny's bone order (``local-ref``
            parameterisation): rotations for every bone, the pelvis position (metres, Anny world)
            as the root's translation, zero translation elsewhere.
        """
        self._check_motion(motion)
        frames = self._check_frames(motion, frames)
        num = int(frames.shape[0])
        self._check_tensor("phenotypes", phenotypes, (num, len(PHENOTYPES)))
        dev, dt = self.device, self.dtype
        C = bvh_to_anny_axes(dt, dev)

        # BVH quantities, Anny's bone order.
        local = motion.local_rotations[frames][:, self._bvh_index_t].to(device=dev, dtype=dt)  # (T, 31, 3, 3)
        local_anny = C @ local @ C.T
        segments = self._bvh_segments(motion).to(device=dev, dtype=dt)  # (31, 3) BVH axes, limb bones only
        segments = segments @ C.T
        offsets = motion.offsets.to(device=dev, dtype=dt)
        i = CMU31.index
        hip_mid_bvh = 0.5 * (offsets[i("LHipJoint")] + offsets[i("LeftUpLeg")])
        hip_mid_bvh = hip_mid_bvh + 0.5 * (offsets[i("RHipJoint")] + offsets[i("RightUpLeg")])  # in the root's frame
        leg_bvh = 0.5 * sum(offsets[i(n)].norm() for n in ("LeftLeg", "LeftFoot", "RightLeg", "RightFoot"))

        # This body's rest skeleton.
        heads, tails = self._rest_skeleton(phenotypes)
        rest = tails - heads  # (T, 31, 3)

        eye = torch.eye(3, dtype=dt, device=dev).expand(num, 3, 3)
        S: list[torch.Tensor] = [eye]
        for c in range(1, len(self.bone_names)):
            p = self.parents[c]
            if self._is_limb[c]:
                parent_s = S[p]
                S.append(_swing((parent_s @ rest[:, c, :, None])[..., 0], segments[c]) @ parent_s)
            else:
                S.append(S[p])
        S_all = torch.stack(S, dim=1)  # (T, 31, 3, 3)
        S_parent = S_all[:, self._parent_or_root]
        D = S_parent.transpose(-1, -2) @ local_anny @ S_all  # root: I^T (C L C^T) I

        b = self._bone
        leg_anny = 0.5 * sum(rest[:, b[n]].norm(dim=-1) for n in ("LeftUpLeg", "LeftLeg", "RightUpLeg", "RightLeg"))
        scale = (leg_anny / leg_bvh)[:, None]  # (T, 1)
        hip_mid_anny = 0.5 * (heads[:, b["LeftUpLeg"]] + heads[:, b["RightUpLeg"]]) - heads[:, b["Hips"]]
        root = motion.root_positions[frames].to(device=dev, dtype=dt)
        target = scale * ((root + (local[:, 0] @ hip_mid_bvh[:, None])[..., 0]) @ C.T)  # hip midpoint, Anny world
        translation = target - (D[:, 0] @ hip_mid_anny[..., None])[..., 0]  # pelvis position

        t = torch.zeros(num, len(self.bone_names), 3, 1, dtype=dt, device=dev)
        t = torch.cat([translation[:, None, :, None], t[:, 1:]], dim=1)
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=dt, device=dev).expand(num, len(self.bone_names), 1, 4)
        return torch.cat([torch.cat([D, t], dim=-1), bottom], dim=-2)

    def _bvh_segments(self, motion: Motion) -> torch.Tensor:
        """``(31, 3)`` BVH zero-pose segment of each limb bone (child OFFSET or End Site), Anny's
        bone order, BVH axes; zero rows for the other bones."""
        out = torch.zeros(len(self.bone_names), 3, dtype=motion.offsets.dtype)
        children = {j: [k for k, p in enumerate(CMU31.parents) if p == j] for j in range(CMU31.num_joints)}
        for c, name in enumerate(self.bone_names):
            if not self._is_limb[c]:
                continue
            j = self._bvh_index[c]
            kids = children[j]
            vec = motion.offsets[kids[0]] if kids else motion.end_sites[j]
            if float(vec.norm()) <= 1e-9:
                raise ValueError(f"motion {motion.name!r}: the zero-pose segment of {name!r} has zero length")
            out[c] = vec
        return out

    # -- forward --------------------------------------------------------------------------------

    def forward(self, pose_parameters: torch.Tensor, phenotypes: torch.Tensor) -> BodyOutput:
        """Pose and skin the bodies.

        Args:
            pose_parameters: ``(B, 31, 4, 4)`` Anny ``local-ref`` pose parameters (e.g. from
                :meth:`pose_parameters`); only the top 3x4 blocks are read.
            phenotypes: ``(B, 6)`` body shapes, :data:`PHENOTYPES` order.
            Both in the model's dtype and on its device.

        Returns:
            :class:`BodyOutput` (metres, Anny world frame), differentiable in both inputs.
        """
        self._check_tensor("pose_parameters", pose_parameters, ("B", len(self.bone_names), 4, 4))
        self._check_tensor("phenotypes", phenotypes, (pose_parameters.shape[0], len(PHENOTYPES)))
        out = self._anny(pose_parameters=pose_parameters, phenotype_kwargs=phenotypes, return_bone_ends=True)
        heads, tails = out["bone_heads"], out["bone_tails"]
        return BodyOutput(
            vertices=out["vertices"],
            joints=self._h36m_joints(heads, tails),
            keypoints=self._keypoints(out),
            bone_heads=heads,
            bone_tails=tails,
        )

    __call__ = forward

    def _h36m_joints(self, heads: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        """``(B, 17, 3)`` H36M17 joints from ``(B, 31, 3)`` posed bone heads and tails."""
        points = torch.cat([heads, tails[:, self._head_bone : self._head_bone + 1]], dim=1)  # (B, 32, 3)
        return points[:, self._joint_index]

    def skeleton(self, pose_parameters: torch.Tensor, phenotypes: torch.Tensor) -> PosedSkeleton:
        """The posed joints and bone ends of :meth:`forward`, without skinning the mesh.

        Forward kinematics on each body's rest skeleton, in Anny's ``local-ref`` convention (module
        docstring): with ``[D_c | d_c]`` the top 3x4 block of bone ``c``'s parameter and ``p`` its
        parent, the bone's world rotation change is ``G_c = G_p D_c`` (``G_root = D_root``), and::

            head_root = d_root
            head_c    = head_p + G_p (rest_head_c - rest_head_p + d_c)
            tail_c    = head_c + G_c (rest_tail_c - rest_head_c)

        (``d_c`` of a non-root bone is 0 in :meth:`pose_parameters`; Anny reads it, so it is kept
        here too.) The result equals :meth:`forward`'s ``joints``, ``bone_heads`` and ``bone_tails``
        to float round-off (measured 1e-6 m in float32, 2e-15 m in float64, for clip poses and for
        arbitrary parameters) at a fraction of its cost, since the 13,718 vertices are never skinned
        (B = 64, float32, one CPU thread: 11 ms forward + backward against 200 ms). Batched over
        bodies; a loop over the 10 depth levels of the bone tree. Differentiable in both inputs, to
        any order (``create_graph=True`` works).

        ``torch.func.vmap``: vmapping over the pose works when the phenotype is shared (closed over
        or passed with ``in_dims=None``), including ``vmap(grad(...))``; call it with a batch of one
        inside, e.g. ``vmap(lambda p: model.skeleton(p[None], ph1).joints[0])(poses)`` with ``ph1``
        ``(1, 6)``. Vmapping over the phenotypes fails inside anny (0.6.2), whose phenotype code
        writes in place (``RuntimeError: vmap: index_put_ ...``): pass batched phenotypes natively.

        Args:
            pose_parameters: ``(B, 31, 4, 4)`` or ``(B, 31, 3, 4)`` pose parameters (e.g. from
                :meth:`pose_parameters`, or the ``(N, 31, 3, 4)`` ``pose`` of
                :class:`~poselab.data.images.PersonImages`); only the top 3x4 blocks are read.
            phenotypes: ``(B, 6)`` body shapes, :data:`PHENOTYPES` order.
            Both in the model's dtype and on its device.

        Returns:
            :class:`PosedSkeleton` (metres), in the frame the root's parameter places the body in: Anny's
            world frame, or a camera frame after :func:`to_camera_frame`.
        """
        self._check_pose(pose_parameters)
        self._check_tensor("phenotypes", phenotypes, (pose_parameters.shape[0], len(PHENOTYPES)))
        rest_heads, rest_tails = self._rest_skeleton(phenotypes)
        D, d = pose_parameters[..., :3, :3], pose_parameters[..., :3, 3]  # (B, 31, 3, 3), (B, 31, 3)
        # Head offsets from the parent in the rest pose, plus the parameter's translation; for the
        # root (its own parent here) this is d_root, the pelvis position.
        offsets = rest_heads - rest_heads[:, self._parent_or_root] + d
        rotations, heads = [D[:, :1]], [d[:, :1]]  # the root level: G_root = D_root, head = d_root
        for bones, parent in self._fk_levels:
            parent_rot, parent_head = rotations[-1][:, parent], heads[-1][:, parent]
            heads.append(parent_head + (parent_rot @ offsets[:, bones, :, None])[..., 0])
            rotations.append(parent_rot @ D[:, bones])
        G = torch.cat(rotations, dim=1)[:, self._fk_inverse]  # (B, 31, 3, 3), bone order
        bone_heads = torch.cat(heads, dim=1)[:, self._fk_inverse]
        bone_tails = bone_heads + (G @ (rest_tails - rest_heads)[..., None])[..., 0]
        return PosedSkeleton(self._h36m_joints(bone_heads, bone_tails), bone_heads, bone_tails)

    def pose_motion(
        self, motion: Motion, frames: torch.Tensor, phenotypes: torch.Tensor, batch_size: int = 64
    ) -> BodyOutput:
        """:meth:`pose_parameters` then :meth:`forward`, in chunks of ``batch_size`` frames.

        Args:
            motion, frames, phenotypes: as :meth:`pose_parameters` (``(T,)``, ``(T, 6)``).
            batch_size: frames per chunk (bounds memory: about 10 MB per body in float32).

        Returns:
            :class:`BodyOutput` with ``B = T``.
        """
        check_int("batch_size", batch_size)
        self._check_motion(motion)
        frames = self._check_frames(motion, frames)
        self._check_tensor("phenotypes", phenotypes, (frames.shape[0], len(PHENOTYPES)))
        outputs = []
        for start in range(0, frames.shape[0], batch_size):
            f, ph = frames[start : start + batch_size], phenotypes[start : start + batch_size]
            outputs.append(self.forward(self.pose_parameters(motion, f, ph), ph))
        return BodyOutput.cat(outputs)


# ---------------------------------------------------------------------------------------------
# Construction (cached) and BVH helpers

_MODELS: dict[tuple[str, torch.dtype], BodyModel] = {}


def body_model(device: str | torch.device = "auto", dtype: torch.dtype = torch.float32) -> BodyModel:
    """The Anny body model on ``device`` in ``dtype``, built once per (device, dtype) and cached.

    The first construction on a new machine builds anny's own disk cache (about a minute);
    later constructions take well under a second.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.
        dtype: ``torch.float32`` (default; about 2x faster than float64, vertices within 1e-6 m) or
            ``torch.float64``.
    """
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype!r}")
    key = (str(dev), dtype)
    if key not in _MODELS:
        import anny  # imported here so that importing poselab stays light

        model = anny.Anny(rig="cmu_mb", skinning_method="lbs").to(device=dev, dtype=dtype)
        model.requires_grad_(False)
        regressor = anny.KeypointsRegressor.coco(model, labels=list(COCO17.joint_names)).to(device=dev, dtype=dtype)
        _MODELS[key] = BodyModel(model, regressor)
    return _MODELS[key]


def bvh_in_anny_frame(motion: Motion, frames: torch.Tensor) -> torch.Tensor:
    """BVH forward-kinematics joints of ``motion`` at ``frames``, in Anny's world axes.

    Only the axes change (``C``: ``(x, y, z) -> (x, -z, y)``); no scaling or translation. For
    comparisons with posed Anny bodies, scale by the leg-length ratio about the hip midpoint.

    Args:
        motion: a CMU31 clip. frames: ``(T,)`` integer indices in ``[0, motion.num_frames)``.

    Returns:
        ``(T, 31, 3)`` metres, CMU31 (file) order, the motion's dtype and device.
    """
    BodyModel._check_motion(motion)
    frames = BodyModel._check_frames(motion, frames)
    joints = forward_kinematics(
        motion.root_positions[frames], motion.local_rotations[frames], motion.offsets, motion.parents
    )
    return joints @ bvh_to_anny_axes(joints.dtype, joints.device).T


def to_camera_frame(pose_parameters: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Pose parameters that pose the same bodies in a camera frame instead of Anny's world frame.

    Anny's posing is equivariant: the root's parameter ``[D_root | d_root]`` is the pelvis'
    world pose and every other bone follows it, so replacing it by ``[R D_root | R d_root + T]``
    moves every posed point ``p`` (vertices, joints, keypoints, bone ends) to ``R p + T``. Only the
    root's block changes. (This holds for any 3x3 ``R``, since skinning weights sum to one; a
    rotation keeps the parameters a rigid pose. Anny's COCO keypoint weights sum to one only to
    1.3e-7, so keypoints follow to about 1e-4 m in float32 at a few metres from the camera.)

    Args:
        pose_parameters: ``(B, 31, 4, 4)`` or ``(B, 31, 3, 4)`` Anny pose parameters, Anny world frame.
        rotation: ``(B, 3, 3)`` world -> camera rotation ``R`` (e.g. ``PersonImages.rotation``).
        translation: ``(B, 3)`` world -> camera translation ``T`` in metres (``PersonImages.translation``).
        All floating point, one dtype and one device.

    Returns:
        Pose parameters of the input's shape (``4x4`` or ``3x4`` blocks), differentiable in all
        three inputs; feed them to :meth:`BodyModel.skeleton` or :meth:`BodyModel.forward` (which
        needs ``4x4``) with the same phenotypes to get outputs in the camera frame (metres).
    """
    tensors = {"pose_parameters": pose_parameters, "rotation": rotation, "translation": translation}
    for arg, x in tensors.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{arg}: expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{arg}: expected a floating-point tensor, got {x.dtype}")
    shape = tuple(pose_parameters.shape)
    if len(shape) != 4 or shape[1:] not in ((31, 4, 4), (31, 3, 4)):
        raise ValueError(f"pose_parameters: expected shape (B, 31, 4, 4) or (B, 31, 3, 4), got {shape}")
    check_shape("rotation", rotation, (shape[0], 3, 3))
    check_shape("translation", translation, (shape[0], 3))
    for arg in ("rotation", "translation"):
        x = tensors[arg]
        if x.dtype != pose_parameters.dtype:
            raise TypeError(
                f"{arg}: dtype {x.dtype} does not match pose_parameters' {pose_parameters.dtype}; "
                f"convert it ({arg}.to(pose_parameters.dtype))"
            )
        if x.device != pose_parameters.device:
            raise ValueError(
                f"{arg}: on device {x.device} but pose_parameters is on {pose_parameters.device}; "
                f"move it ({arg}.to(pose_parameters.device))"
            )
    root = pose_parameters[:, :1]
    rot = rotation[:, None] @ root[..., :3, :3]  # (B, 1, 3, 3)
    shift = (rotation[:, None] @ root[..., :3, 3:]) + translation[:, None, :, None]  # (B, 1, 3, 1)
    block = torch.cat([rot, shift], dim=-1)  # (B, 1, 3, 4)
    if pose_parameters.shape[2] == 4:
        block = torch.cat([block, root[:, :, 3:]], dim=-2)  # keep the input's bottom row
    return torch.cat([block, pose_parameters[:, 1:]], dim=1)
