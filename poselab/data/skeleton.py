"""Joint layouts: the 31-joint CMU BVH skeleton, the 17-joint Human3.6M layout, the map between them,
and the 17 COCO keypoints (for image-based models).

A :class:`Skeleton` is only names and topology (parents, left/right pairs); bone
lengths live with the data (see :mod:`poselab.data.mocap`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

__all__ = [
    "Skeleton",
    "CMU31",
    "H36M17",
    "COCO17",
    "CMU_HEAD_TOP",
    "CMU_POINTS",
    "CMU_TO_H36M",
    "cmu_to_h36m",
    "LAYOUTS",
    "ZERO_LENGTH_JOINTS",
    "structure_limbs",
    "structure_symmetric_limbs",
]


@dataclass(frozen=True)
class Skeleton:
    """A named joint tree.

    Attributes:
        name: short identifier, e.g. ``"cmu31"``.
        joint_names: ``(J,)`` unique joint names.
        parents: ``(J,)`` parent index of every joint, ``-1`` for the root (joint 0 only);
            ``parents[j] < j``, so iterating joints in index order visits parents first.
        symmetric_joints: ``(left, right)`` joint index pairs.
    """

    name: str
    joint_names: tuple[str, ...]
    parents: tuple[int, ...]
    symmetric_joints: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        # Store tuples even when lists were passed, so the dataclass stays hashable and immutable.
        object.__setattr__(self, "joint_names", tuple(self.joint_names))
        object.__setattr__(self, "parents", tuple(int(p) for p in self.parents))
        object.__setattr__(self, "symmetric_joints", tuple((int(a), int(b)) for a, b in self.symmetric_joints))
        names, parents = self.joint_names, self.parents
        if len(names) == 0:
            raise ValueError(f"Skeleton {self.name!r}: expected at least one joint, got none")
        if len(parents) != len(names):
            raise ValueError(
                f"Skeleton {self.name!r}: expected one parent per joint ({len(names)}), got {len(parents)}"
            )
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"Skeleton {self.name!r}: joint names must be unique, repeated: {dup}")
        if parents[0] != -1:
            raise ValueError(f"Skeleton {self.name!r}: joint 0 must be the root (parent -1), got parent {parents[0]}")
        for j, p in enumerate(parents[1:], start=1):
            if not 0 <= p < j:
                raise ValueError(
                    f"Skeleton {self.name!r}: expected 0 <= parents[{j}] < {j} (topological order, one root), got {p}"
                )
        for left, right in self.symmetric_joints:
            if not (0 <= left < len(names) and 0 <= right < len(names)) or left == right:
                raise ValueError(
                    f"Skeleton {self.name!r}: symmetric pair ({left}, {right}) must be two different joint indices "
                    f"in [0, {len(names)})"
                )

    @property
    def num_joints(self) -> int:
        """Number of joints ``J``."""
        return len(self.joint_names)

    @property
    def limbs(self) -> tuple[tuple[int, int], ...]:
        """``(parent, child)`` for every non-root joint, in child order; ``J - 1`` limbs."""
        return tuple((p, j) for j, p in enumerate(self.parents) if p >= 0)

    @property
    def symmetric_limbs(self) -> tuple[tuple[tuple[int, int], tuple[int, int]], ...]:
        """Left/right limb pairs ``((lp, lc), (rp, rc))``: the limbs ending at each symmetric joint pair."""
        return tuple(
            ((self.parents[lc], lc), (self.parents[rc], rc))
            for lc, rc in self.symmetric_joints
            if self.parents[lc] >= 0 and self.parents[rc] >= 0
        )

    @cached_property
    def _index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.joint_names)}

    def index(self, name: str) -> int:
        """Index of joint ``name``; ``KeyError`` listing the valid names otherwise."""
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(
                f"unknown joint {name!r} in skeleton {self.name!r}; expected one of {', '.join(self.joint_names)}"
            ) from None


def _pairs(names: tuple[str, ...], pairs: list[tuple[str, str]]) -> tuple[tuple[int, int], ...]:
    return tuple((names.index(a), names.index(b)) for a, b in pairs)


_CMU_NAMES = (
    "Hips",  # 0 pelvis centre, 6 channels
    "LHipJoint",  # 1 = Hips position
    "LeftUpLeg",  # 2 left hip joint
    "LeftLeg",  # 3 left knee
    "LeftFoot",  # 4 left ankle
    "LeftToeBase",  # 5 left ball of foot (End Site: toe tip)
    "RHipJoint",  # 6 = Hips position
    "RightUpLeg",  # 7 right hip joint
    "RightLeg",  # 8 right knee
    "RightFoot",  # 9 right ankle
    "RightToeBase",  # 10 right ball of foot (End Site: toe tip)
    "LowerBack",  # 11 = Hips position
    "Spine",  # 12 top of the lumbar spine
    "Spine1",  # 13 top of the upper back
    "Neck",  # 14 base of the neck
    "Neck1",  # 15 middle of the neck
    "Head",  # 16 base of the head (End Site: top of the head)
    "LeftShoulder",  # 17 inner end of the left clavicle
    "LeftArm",  # 18 left shoulder joint
    "LeftForeArm",  # 19 left elbow
    "LeftHand",  # 20 left wrist
    "LeftFingerBase",  # 21 start of the hand
    "LeftHandIndex1",  # 22 knuckles (End Site: finger tip)
    "LThumb",  # 23 (End Site: thumb tip)
    "RightShoulder",  # 24
    "RightArm",  # 25
    "RightForeArm",  # 26
    "RightHand",  # 27
    "RightFingerBase",  # 28
    "RightHandIndex1",  # 29
    "RThumb",  # 30
)

CMU31 = Skeleton(
    name="cmu31",
    joint_names=_CMU_NAMES,
    parents=(-1, 0, 1, 2, 3, 4, 0, 6, 7, 8, 9, 0, 11, 12, 13, 14, 15, 13, 17, 18, 19, 20, 21, 20,
             13, 24, 25, 26, 27, 28, 27),  # fmt: skip
    symmetric_joints=_pairs(
        _CMU_NAMES,
        [
            ("LHipJoint", "RHipJoint"),
            ("LeftUpLeg", "RightUpLeg"),
            ("LeftLeg", "RightLeg"),
            ("LeftFoot", "RightFoot"),
            ("LeftToeBase", "RightToeBase"),
            ("LeftShoulder", "RightShoulder"),
            ("LeftArm", "RightArm"),
            ("LeftForeArm", "RightForeArm"),
            ("LeftHand", "RightHand"),
            ("LeftFingerBase", "RightFingerBase"),
            ("LeftHandIndex1", "RightHandIndex1"),
            ("LThumb", "RThumb"),
        ],
    ),
)
"""The 31 joints of the CMU BVH files in file order (= MOTION column order); see ``data/mocap/README.md``."""

_H36M_NAMES = (
    "Hip", "RHip", "RKnee", "RFoot", "LHip", "LKnee", "LFoot", "Spine", "Thorax",
    "Neck/Nose", "Head", "LShoulder", "LElbow", "LWrist", "RShoulder", "RElbow", "RWrist",
)  # fmt: skip

H36M17 = Skeleton(
    name="h36m17",
    joint_names=_H36M_NAMES,
    parents=(-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15),
    symmetric_joints=_pairs(
        _H36M_NAMES,
        [("LHip", "RHip"), ("LKnee", "RKnee"), ("LFoot", "RFoot"),
         ("LShoulder", "RShoulder"), ("LElbow", "RElbow"), ("LWrist", "RWrist")],
    ),  # fmt: skip
)
"""The 17-joint Human3.6M layout in VideoPose3D order (foot = ankle, head = top of the head)."""


_COCO_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip

COCO17 = Skeleton(
    name="coco17",
    joint_names=_COCO_NAMES,
    # eyes <- nose, ears <- eyes, shoulders <- nose, elbows <- shoulders, wrists <- elbows,
    # hips <- shoulders, knees <- hips, ankles <- knees
    parents=(-1, 0, 0, 1, 2, 0, 0, 5, 6, 7, 8, 5, 6, 11, 12, 13, 14),
    symmetric_joints=_pairs(
        _COCO_NAMES,
        [(f"left_{part}", f"right_{part}") for part in ("eye", "ear", "shoulder", "elbow", "wrist", "hip", "knee", "ankle")],
    ),
)
"""The 17 COCO keypoints in the standard COCO order (``left_*`` = the person's left), as a tree rooted
at the nose. Not in :data:`LAYOUTS`: the CMU clips have no face points, so no lifting dataset is built
in this layout; body meshes give it (:mod:`poselab.data.body`)."""

CMU_HEAD_TOP = CMU31.num_joints  # 31
"""Index of the ``Head`` End Site (top of the head) in the ``(..., 32, 3)`` input of :func:`cmu_to_h36m`."""

CMU_POINTS = CMU31.num_joints + 1  # 32
"""Number of points :func:`cmu_to_h36m` expects: the 31 CMU joints in file order, then the head top."""

CMU_TO_H36M: tuple[int, ...] = (
    CMU31.index("Hips"),  # 0  Hip        <- Hips (pelvis centre)
    CMU31.index("RightUpLeg"),  # 1  RHip  <- RightUpLeg (right hip joint)
    CMU31.index("RightLeg"),  # 2  RKnee    <- RightLeg (right knee)
    CMU31.index("RightFoot"),  # 3  RFoot   <- RightFoot (right ankle)
    CMU31.index("LeftUpLeg"),  # 4  LHip   <- LeftUpLeg
    CMU31.index("LeftLeg"),  # 5  LKnee     <- LeftLeg
    CMU31.index("LeftFoot"),  # 6  LFoot    <- LeftFoot (ankle)
    CMU31.index("Spine"),  # 7  Spine       <- Spine (top of the lumbar spine)
    CMU31.index("Neck"),  # 8  Thorax       <- Neck (base of the neck, between the clavicles)
    CMU31.index("Head"),  # 9  Neck/Nose    <- Head (base of the head)
    CMU_HEAD_TOP,  # 10 Head                <- Head End Site (top of the head)
    CMU31.index("LeftArm"),  # 11 LShoulder <- LeftArm (left shoulder joint)
    CMU31.index("LeftForeArm"),  # 12 LElbow <- LeftForeArm
    CMU31.index("LeftHand"),  # 13 LWrist   <- LeftHand
    CMU31.index("RightArm"),  # 14 RShoulder <- RightArm
    CMU31.index("RightForeArm"),  # 15 RElbow <- RightForeArm
    CMU31.index("RightHand"),  # 16 RWrist  <- RightHand
)
"""For each H36M17 joint, its source index in the ``(..., 32, 3)`` CMU point layout (see :func:`cmu_to_h36m`)."""


def cmu_to_h36m(points: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Select the 17 Human3.6M joints (VideoPose3D order) from CMU BVH points.

    Args:
        points: ``(..., 32, 3)`` positions (any unit, any frame), torch or NumPy: the 31
            :data:`CMU31` joints in BVH file order, followed by the ``Head`` End Site (the top
            of the head) at index :data:`CMU_HEAD_TOP` = 31. :func:`poselab.data.mocap.motion_to_h36m`
            builds this layout from a clip.

    Returns:
        ``(..., 17, 3)`` of the same type, dtype and device (a copy, not a view).

    The map, joint by joint (H36M17 <- CMU BVH joint; what the point is):

    ====  ===========  ===================  ===========================================
    H36M  name         CMU source           anatomical point
    ====  ===========  ===================  ===========================================
    0     Hip          0  Hips              pelvis centre (CMU ``root``)
    1     RHip         7  RightUpLeg        right hip joint
    2     RKnee        8  RightLeg          right knee
    3     RFoot        9  RightFoot         right ankle
    4     LHip         2  LeftUpLeg         left hip joint
    5     LKnee        3  LeftLeg           left knee
    6     LFoot        4  LeftFoot          left ankle
    7     Spine        12 Spine             top of the lumbar spine
    8     Thorax       14 Neck              base of the neck, between the clavicles
    9     Neck/Nose    16 Head              base of the head
    10    Head         31 Head End Site     top of the head
    11    LShoulder    18 LeftArm           left shoulder joint
    12    LElbow       19 LeftForeArm       left elbow
    13    LWrist       20 LeftHand          left wrist
    14    RShoulder    25 RightArm          right shoulder joint
    15    RElbow       26 RightForeArm      right elbow
    16    RWrist       27 RightHand         right wrist
    ====  ===========  ===================  ===========================================

    Human3.6M's "Spine" and "Neck/Nose" are marker-based points that no CMU joint hits
    exactly; the closest skeletal joints above are used, so bone-length statistics of the
    result differ somewhat from real Human3.6M data.
    """
    if not isinstance(points, (torch.Tensor, np.ndarray)):
        raise TypeError(f"points: expected a torch.Tensor or numpy.ndarray, got {type(points).__name__}")
    if points.ndim < 2 or tuple(points.shape[-2:]) != (CMU_POINTS, 3):
        raise ValueError(
            f"points: expected shape (..., {CMU_POINTS}, 3) (31 CMU joints + the Head End Site), "
            f"got {tuple(points.shape)}"
        )
    if isinstance(points, torch.Tensor):
        index = torch.tensor(CMU_TO_H36M, device=points.device)
        return points.index_select(-2, index)
    return points[..., list(CMU_TO_H36M), :]


def cmu_to_h36m_table() -> list[tuple[str, str]]:
    """The CMU -> H36M17 map as ``(H36M17 joint name, CMU source name)`` rows, in H36M17 order.

    The source of the head top is the ``Head`` End Site, named ``"Head End Site"``.
    """
    source = CMU31.joint_names + ("Head End Site",)
    return [(H36M17.joint_names[i], source[s]) for i, s in enumerate(CMU_TO_H36M)]


LAYOUTS: dict[str, Skeleton] = {"h36m17": H36M17, "cmu31": CMU31}
"""Joint layouts a lifting dataset can use (``poselab.data.lifting.build_lifting_splits(layout=...)``)."""

ZERO_LENGTH_JOINTS: dict[str, tuple[str, ...]] = {"cmu31": ("LHipJoint", "RHipJoint", "LowerBack")}
"""Joints whose bone from their parent has length 0 in the data: in the CMU BVH files
``LHipJoint``, ``RHipJoint`` and ``LowerBack`` have a zero offset from ``Hips``, so they sit
exactly on the pelvis centre in every frame. Their bones carry no length, and a relative
length error on them is undefined."""


def structure_limbs(skeleton: Skeleton) -> tuple[tuple[int, int], ...]:
    """The skeleton's ``(parent, child)`` bones without the zero-length ones
    (:data:`ZERO_LENGTH_JOINTS`): the body segments of the structural metrics (BSLE)."""
    zero = {skeleton.index(n) for n in ZERO_LENGTH_JOINTS.get(skeleton.name, ())}
    return tuple(limb for limb in skeleton.limbs if limb[1] not in zero)


def structure_symmetric_limbs(skeleton: Skeleton) -> tuple[tuple[tuple[int, int], tuple[int, int]], ...]:
    """Left/right limb pairs without zero-length bones: the pairs of LSE and the limbs of LLE."""
    zero = {skeleton.index(n) for n in ZERO_LENGTH_JOINTS.get(skeleton.name, ())}
    return tuple(pair for pair in skeleton.symmetric_limbs if pair[0][1] not in zero and pair[1][1] not in zero)
