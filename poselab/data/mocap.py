"""CMU motion capture: BVH files -> :class:`Motion` -> 3D joint positions.

World frame: the BVH axes, in metres. +Y is up, the floor is the XZ plane at about
``y = 0`` (per clip the lowest toe lies within a few cm of it), X and Z are horizontal;
clips are not rotated to face one way.

Tensors are ``torch.float32`` on the CPU. ``bvhio`` (the parser used here) stores
offsets, positions and rotations in single precision (``glm`` types), so float64 would
only carry noise; float32 is also what every model in poselab consumes. Forward
kinematics works in whatever dtype/device its inputs have.

``bvhio`` is wrapped, not trusted: it loops forever on a file that ends early, ignores
extra values on a frame line and unknown channel names, and fails with a bare
``IndexError`` on a short frame line. :func:`load_bvh` therefore checks the whole file
itself first and raises :class:`BVHError` naming the file, the line, and what was
expected and found.
"""

from __future__ import annotations

import codecs
import csv
import functools
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from poselab.checks import check_choice
from poselab.data.skeleton import CMU31, CMU_POINTS, cmu_to_h36m

__all__ = [
    "BVH_UNIT_METRES",
    "MOCAP_DIR",
    "BVHError",
    "ClipInfo",
    "Motion",
    "clip_index",
    "clip_names",
    "clear_caches",
    "forward_kinematics",
    "load_bvh",
    "load_clip",
    "mocap_dir",
    "motion_end_sites",
    "motion_joints",
    "motion_to_h36m",
]

BVH_UNIT_METRES = 0.05644
"""One CMU/ASF length unit in metres (1/0.45 inch)."""

MOCAP_DIR = Path(__file__).resolve().parents[2] / "data" / "mocap"
"""Default data folder (``<repo>/data/mocap``); :func:`mocap_dir` prefers ``$POSELAB_MOCAP_DIR``."""

_ENV = "POSELAB_MOCAP_DIR"
_ROTATION_CHANNELS = ("Xrotation", "Yrotation", "Zrotation")
_POSITION_CHANNELS = ("Xposition", "Yposition", "Zposition")
_FLOAT32_MAX = float(np.finfo(np.float32).max)  # bvhio stores every number as float32 (glm)


class BVHError(ValueError):
    """A BVH file that cannot be read as it is: the message names the file, the line, and
    what was expected and what was found."""


def mocap_dir() -> Path:
    """The mocap data folder: ``$POSELAB_MOCAP_DIR`` if set, else :data:`MOCAP_DIR`.

    Raises ``FileNotFoundError`` (mentioning ``POSELAB_MOCAP_DIR``) if the folder does not exist.
    """
    env = os.environ.get(_ENV)
    path = Path(env).expanduser() if env else MOCAP_DIR
    if not path.is_dir():
        source = f"${_ENV}={env!r}" if env else f"the default {MOCAP_DIR} (${_ENV} is not set)"
        raise FileNotFoundError(
            f"mocap data folder not found: {path} (from {source}); point ${_ENV} at the folder holding "
            "index.csv and the .bvh clips"
        )
    return path


# ---------------------------------------------------------------------------------------------
# Motion


@dataclass
class Motion:
    """One BVH clip, in metres (float32 tensors on the CPU when loaded from a file).

    Attributes:
        name: clip name, e.g. ``"05_02"`` (the file stem).
        joint_names: ``(J,)`` joint names in file order (= MOTION column order).
        parents: ``(J,)`` parent indices, ``-1`` for the root, ``parents[j] < j``.
        offsets: ``(J, 3)`` metres, rest offset of each joint from its parent, in the parent's
            frame (the OFFSET lines). ``offsets[0]`` (the root OFFSET) is kept for reference;
            forward kinematics places the root at ``root_positions`` (bvhio semantics: the
            position channels replace the root OFFSET; it is 0 in the CMU files anyway).
        end_sites: joint index -> ``(3,)`` metres End Site offset in that joint's frame.
        root_positions: ``(T, 3)`` metres, world position of the root per frame.
        local_rotations: ``(T, J, 3, 3)`` parent-relative rotation matrices (column vectors):
            for channel order ``Zrotation Yrotation Xrotation``, ``R = Rz(z) @ Ry(y) @ Rx(x)``
            (the product follows the channel order); identity for joints without rotation channels.
        fps: frames per second, ``1 / Frame Time``.
        local_offsets: ``None`` when only the root has position channels (every CMU clip):
            each joint then sits at its static ``offsets[j]``. Otherwise ``(T, J, 3)`` metres,
            the per-frame translation of each joint from its parent in the parent's frame: a
            joint's ``Xposition``/``Yposition``/``Zposition`` channels replace the matching
            component of its OFFSET in that frame; components without a channel, and joints
            without position channels, keep ``offsets[j]``. ``local_offsets[:, 0]`` equals
            ``root_positions``. :func:`motion_joints` and :func:`motion_end_sites` use it.
    """

    name: str
    joint_names: tuple[str, ...]
    parents: tuple[int, ...]
    offsets: torch.Tensor
    end_sites: dict[int, torch.Tensor]
    root_positions: torch.Tensor
    local_rotations: torch.Tensor
    fps: float
    local_offsets: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.local_offsets is not None:
            want = (int(self.local_rotations.shape[0]), len(self.joint_names), 3)
            offsets = self.local_offsets
            if not isinstance(offsets, torch.Tensor) or tuple(offsets.shape) != want:
                got = tuple(offsets.shape) if isinstance(offsets, torch.Tensor) else type(offsets).__name__
                raise ValueError(
                    f"motion {self.name!r}: local_offsets: expected None or a tensor of shape (T, J, 3) = {want} "
                    f"like local_rotations, got {got} (select frames of local_offsets too)"
                )

    def fk_offsets(self) -> torch.Tensor:
        """What forward kinematics translates each joint by: ``local_offsets`` ``(T, J, 3)`` if set, else
        ``offsets`` ``(J, 3)``; metres."""
        return self.offsets if self.local_offsets is None else self.local_offsets

    @property
    def num_frames(self) -> int:
        """Number of frames ``T``."""
        return int(self.local_rotations.shape[0])

    @property
    def num_joints(self) -> int:
        """Number of joints ``J``."""
        return len(self.joint_names)

    def clone(self) -> Motion:
        """A deep copy (tensors cloned), safe to modify."""
        return Motion(
            name=self.name,
            joint_names=self.joint_names,
            parents=self.parents,
            offsets=self.offsets.clone(),
            end_sites={j: v.clone() for j, v in self.end_sites.items()},
            root_positions=self.root_positions.clone(),
            local_rotations=self.local_rotations.clone(),
            fps=self.fps,
            local_offsets=None if self.local_offsets is None else self.local_offsets.clone(),
        )


# ---------------------------------------------------------------------------------------------
# BVH reading: our own structural check, then bvhio


@dataclass
class _Layout:
    """What the structural check found (enough to cross-check bvhio's result)."""

    names: list[str] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    channels: list[list[str]] = field(default_factory=list)
    end_site_joints: list[int] = field(default_factory=list)
    frames: int = 0
    frame_time: float = 0.0
    bom: bool = False  # the file starts with a UTF-8 byte order mark


class _Lines:
    """Non-blank lines of a file with 1-based line numbers (bvhio also skips blank lines)."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.items = [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
        self.pos = 0
        self.last_line = text.count("\n") + (0 if text.endswith("\n") else 1)

    def error(self, line: int | None, expected: str, found: str) -> BVHError:
        where = f"line {line}" if line is not None else "end of file"
        return BVHError(f"{self.path}, {where}: expected {expected}, found {found}")

    def next(self, expected: str) -> tuple[int, list[str]]:
        if self.pos >= len(self.items):
            raise self.error(None, expected, f"the end of the file (after line {self.last_line})")
        item = self.items[self.pos]
        self.pos += 1
        return item


def _show(tokens: list[str]) -> str:
    text = " ".join(tokens)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _float(lines: _Lines, line: int, token: str, what: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise lines.error(line, f"a number for {what}", f"malformed number {token!r}") from None
    if not math.isfinite(value):
        raise lines.error(line, f"a finite number for {what}", repr(token))
    if abs(value) > _FLOAT32_MAX:
        raise lines.error(
            line, f"a number within the float32 range (|x| <= {_FLOAT32_MAX:.4g}) for {what}", f"{token!r} (overflows)"
        )
    return value


def _read_offset(lines: _Lines, owner: str) -> None:
    n, tok = lines.next(f"'OFFSET x y z' of {owner}")
    if tok[0] != "OFFSET" or len(tok) != 4:
        raise lines.error(n, f"'OFFSET x y z' (3 numbers) of {owner}", _show(tok))
    for t in tok[1:]:
        _float(lines, n, t, f"the OFFSET of {owner}")


def _read_joint(lines: _Lines, layout: _Layout, name: str, parent: int) -> None:
    index = len(layout.names)
    if name in layout.names:
        raise lines.error(lines.items[lines.pos - 1][0], "unique joint names", f"a second joint {name!r}")
    layout.names.append(name)
    layout.parents.append(parent)
    n, tok = lines.next(f"'{{' opening joint {name!r}")
    if tok != ["{"]:
        raise lines.error(n, f"'{{' opening joint {name!r}", _show(tok))
    _read_offset(lines, f"joint {name!r}")
    n, tok = lines.next(f"'CHANNELS n ...' of joint {name!r}")
    if tok[0] != "CHANNELS" or len(tok) < 2:
        raise lines.error(n, f"'CHANNELS n name...' of joint {name!r}", _show(tok))
    try:
        count = int(tok[1])
    except ValueError:
        raise lines.error(n, f"an integer channel count for joint {name!r}", repr(tok[1])) from None
    channels = tok[2:]
    if count != len(channels):
        raise lines.error(n, f"{count} channel names for joint {name!r} (as declared)", f"{len(channels)}")
    allowed = _POSITION_CHANNELS + _ROTATION_CHANNELS
    for c in channels:
        if c not in allowed:
            raise lines.error(n, f"a channel name, one of {', '.join(allowed)}, for joint {name!r}", repr(c))
    if len(set(channels)) != len(channels):
        raise lines.error(n, f"each channel at most once for joint {name!r}", _show(tok))
    layout.channels.append(channels)
    has_end_site = False
    while True:
        n, tok = lines.next(f"'JOINT', 'End Site' or '}}' closing joint {name!r}")
        if tok[0] == "JOINT" and len(tok) == 2:
            _read_joint(lines, layout, tok[1], index)
        elif tok == ["End", "Site"]:
            if has_end_site:
                raise lines.error(n, f"at most one End Site for joint {name!r}", "a second one")
            has_end_site = True
            layout.end_site_joints.append(index)
            n, tok = lines.next(f"'{{' opening the End Site of {name!r}")
            if tok != ["{"]:
                raise lines.error(n, f"'{{' opening the End Site of {name!r}", _show(tok))
            _read_offset(lines, f"the End Site of {name!r}")
            n, tok = lines.next(f"'}}' closing the End Site of {name!r}")
            if tok != ["}"]:
                raise lines.error(n, f"'}}' closing the End Site of {name!r}", _show(tok))
        elif tok == ["}"]:
            return
        else:
            raise lines.error(n, f"'JOINT name', 'End Site' or '}}' inside joint {name!r}", _show(tok))


def _check_bvh(path: Path) -> _Layout:
    """Check the structure and every number of a BVH file; return its layout.

    Guarantees what bvhio needs to terminate and to read the right numbers: a complete
    hierarchy, a MOTION header, exactly ``Frames:`` frame lines, each with exactly as many
    finite numbers (within the float32 range) as the hierarchy declares channels, and only
    channel names bvhio maps. A leading UTF-8 byte order mark is skipped (``layout.bom``).
    """
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BVHError(f"{path}: expected a UTF-8/ASCII text BVH file, found undecodable bytes ({exc})") from None
    lines = _Lines(path, text)
    layout = _Layout(bom=raw.startswith(codecs.BOM_UTF8))

    n, tok = lines.next("'HIERARCHY' on the first line")
    if tok != ["HIERARCHY"]:
        raise lines.error(n, "'HIERARCHY' on the first line", _show(tok))
    n, tok = lines.next("'ROOT name'")
    if tok[0] != "ROOT" or len(tok) != 2:
        raise lines.error(n, "'ROOT name'", _show(tok))
    _read_joint(lines, layout, tok[1], -1)

    n, tok = lines.next("'MOTION' after the hierarchy")
    if tok != ["MOTION"]:
        raise lines.error(n, "'MOTION' after the hierarchy (one ROOT only)", _show(tok))
    n, tok = lines.next("'Frames: N'")
    if tok[0] != "Frames:" or len(tok) != 2:
        raise lines.error(n, "'Frames: N'", _show(tok))
    try:
        layout.frames = int(tok[1])
    except ValueError:
        raise lines.error(n, "an integer frame count after 'Frames:'", repr(tok[1])) from None
    if layout.frames < 1:
        raise lines.error(n, "a frame count >= 1", tok[1])
    frames_line = n
    n, tok = lines.next("'Frame Time: seconds'")
    if tok[:2] != ["Frame", "Time:"] or len(tok) != 3:
        raise lines.error(n, "'Frame Time: seconds'", _show(tok))
    layout.frame_time = _float(lines, n, tok[2], "Frame Time")
    if layout.frame_time <= 0:
        raise lines.error(n, "a Frame Time > 0", tok[2])

    rows = lines.items[lines.pos :]
    num_channels = sum(len(c) for c in layout.channels)
    if len(rows) < layout.frames:
        raise BVHError(
            f"{path}: truncated file: expected {layout.frames} frame lines ('Frames: {layout.frames}' on line "
            f"{frames_line}), found {len(rows)} (the file ends at line {lines.last_line})"
        )
    if len(rows) > layout.frames:
        raise lines.error(
            rows[layout.frames][0],
            f"the end of the file after {layout.frames} frame lines ('Frames: {layout.frames}' on line {frames_line})",
            f"another line {_show(rows[layout.frames][1])}",
        )
    for n, tok in rows:
        if len(tok) != num_channels:
            raise lines.error(
                n,
                f"{num_channels} values per frame line (the channels declared in the HIERARCHY)",
                f"{len(tok)} values",
            )
    # One bulk conversion; only on failure look for the offending line and token.
    try:
        values = np.array([t for _, tok in rows for t in tok], dtype=np.float64)
        ok = bool(np.isfinite(values).all()) and bool((np.abs(values) <= _FLOAT32_MAX).all())
    except ValueError:
        ok = False
    if not ok:
        for n, tok in rows:
            for t in tok:
                _float(lines, n, t, "a channel value")
    return layout


def _quaternions_to_matrices(q: np.ndarray) -> np.ndarray:
    """``(..., 4)`` quaternions ``(w, x, y, z)`` -> ``(..., 3, 3)`` rotation matrices (column vectors)."""
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)  # bvhio's float32 quaternions drift from unit length
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def load_bvh(path: str | os.PathLike) -> Motion:
    """Read a BVH file into a :class:`Motion` in metres (float32 CPU tensors).

    The file is checked in full first (see module docstring), then parsed with ``bvhio``.
    Lengths are multiplied by :data:`BVH_UNIT_METRES` (the CMU unit). Channels may come in
    any order, position and rotation channels interleaved; the local rotation is the product
    of the per-axis rotations in the order of the rotation channels (``Zrotation Yrotation
    Xrotation`` -> ``Rz @ Ry @ Rx``). Position channels on the root give ``root_positions``;
    on any other joint they give its per-frame translation from its parent
    (``Motion.local_offsets``, replacing the matching OFFSET components). A UTF-8 byte order
    mark at the start of the file is accepted.

    Raises:
        IsADirectoryError: ``path`` is a directory.
        FileNotFoundError: ``path`` does not exist.
        BVHError: the file is malformed (message: file, line, expected, found), e.g. a value
            that overflows float32 such as ``1e39``.
    """
    with warnings.catch_warnings():  # bvhio's `import glm` triggers a PyGLM PendingDeprecationWarning
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        import bvhio  # imported here so that importing poselab stays light

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: expected a BVH file, found a directory")
    if not path.is_file():
        raise FileNotFoundError(f"BVH file not found: {path}")
    layout = _check_bvh(path)
    try:
        if layout.bom:  # bvhio would read the mark as part of 'HIERARCHY': give it a copy without
            with tempfile.TemporaryDirectory(prefix="poselab-bvh-") as tmp:
                copy = Path(tmp) / path.name
                copy.write_bytes(path.read_bytes()[len(codecs.BOM_UTF8) :])
                container = bvhio.readAsBvh(str(copy))
        else:
            container = bvhio.readAsBvh(str(path))
    except (SyntaxError, ValueError, IndexError) as exc:  # defensive: our check should have caught it
        raise BVHError(f"{path}: bvhio could not parse the file: {exc}") from exc
    joints = [j for j, _, _ in container.Root.layout()]
    if [j.Name for j in joints] != layout.names or [list(j.Channels) for j in joints] != layout.channels:
        raise BVHError(f"{path}: bvhio read a different hierarchy than the file declares; refusing to guess")
    if container.FrameCount != layout.frames or any(len(j.Keyframes) != layout.frames for j in joints):
        raise BVHError(f"{path}: expected {layout.frames} frames from bvhio, got {container.FrameCount}")

    # bvhio: Pose.Rotation = glm quaternion of the intrinsic Euler rotation in channel order.
    quats = np.array(
        [[(q.w, q.x, q.y, q.z) for q in (k.Rotation for k in j.Keyframes)] for j in joints], dtype=np.float64
    )  # (J, T, 4)
    rotations = _quaternions_to_matrices(quats).transpose(1, 0, 2, 3)  # (T, J, 3, 3)
    root = np.array([tuple(k.Position) for k in joints[0].Keyframes], dtype=np.float64)  # (T, 3)
    offsets = np.array([tuple(j.Offset) for j in joints], dtype=np.float64)
    dtype = torch.float32
    local_offsets = None
    if any(c in _POSITION_CHANNELS for channels in layout.channels[1:] for c in channels):
        # bvhio: Pose.Position = the joint's OFFSET with each position channel replacing its component.
        keyed = np.array([[tuple(k.Position) for k in j.Keyframes] for j in joints], dtype=np.float64)  # (J, T, 3)
        local_offsets = torch.tensor(keyed.transpose(1, 0, 2) * BVH_UNIT_METRES, dtype=dtype)
    return Motion(
        name=path.stem,
        joint_names=tuple(layout.names),
        parents=tuple(layout.parents),
        offsets=torch.tensor(offsets * BVH_UNIT_METRES, dtype=dtype),
        end_sites={
            j: torch.tensor(tuple(joints[j].EndSite), dtype=torch.float64).mul(BVH_UNIT_METRES).to(dtype)
            for j in layout.end_site_joints
        },
        root_positions=torch.tensor(root * BVH_UNIT_METRES, dtype=dtype),
        local_rotations=torch.tensor(rotations, dtype=dtype),
        # BVH writes Frame Time with ~6 significant digits (0.0333333 s); round so 30 fps reads 30.0.
        fps=round(1.0 / layout.frame_time, 3),
        local_offsets=local_offsets,
    )


# ---------------------------------------------------------------------------------------------
# Forward kinematics


def forward_kinematics(
    root_positions: torch.Tensor,
    local_rotations: torch.Tensor,
    offsets: torch.Tensor,
    parents: Sequence[int],
    *,
    return_rotations: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """World joint positions from local rotations: ``world_j = world_parent @ [R_j | offset_j]``.

    Vectorised over frames (and any leading batch dims); loops over joints in index order,
    which is topological because ``parents[j] < j``.

    Args:
        root_positions: ``(..., 3)`` world position of joint 0.
        local_rotations: ``(..., J, 3, 3)`` parent-relative rotations (column vectors).
        offsets: ``(J, 3)`` rest offset of each joint in its parent's frame, the same for every
            frame, or ``(..., J, 3)`` (the leading dims of ``local_rotations``) for per-frame
            translations such as ``Motion.local_offsets``. ``offsets[..., 0, :]`` is unused: the
            root sits at ``root_positions``.
        parents: ``(J,)`` parent indices, ``-1`` for joint 0, ``parents[j] < j``.
        return_rotations: also return the world rotations.

    Returns:
        ``(..., J, 3)`` world positions in the units of ``offsets``/``root_positions`` (and
        ``(..., J, 3, 3)`` world rotations if ``return_rotations``); dtype/device of the inputs.
    """
    for arg, x in (("root_positions", root_positions), ("local_rotations", local_rotations), ("offsets", offsets)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{arg}: expected a torch.Tensor, got {type(x).__name__}")
    parents = tuple(int(p) for p in parents)
    num = len(parents)
    if local_rotations.ndim < 3 or tuple(local_rotations.shape[-3:]) != (num, 3, 3):
        raise ValueError(f"local_rotations: expected shape (..., {num}, 3, 3), got {tuple(local_rotations.shape)}")
    batch = tuple(local_rotations.shape[:-3])
    if tuple(root_positions.shape) != batch + (3,):
        raise ValueError(f"root_positions: expected shape {batch + (3,)}, got {tuple(root_positions.shape)}")
    per_frame = offsets.ndim > 2
    if tuple(offsets.shape) not in ((num, 3), batch + (num, 3)):
        raise ValueError(
            f"offsets: expected shape ({num}, 3) or {batch + (num, 3)} (per frame), got {tuple(offsets.shape)}"
        )
    if num == 0 or parents[0] != -1 or any(not 0 <= p < j for j, p in enumerate(parents) if j > 0):
        raise ValueError(f"parents: expected -1 for joint 0 and 0 <= parents[j] < j, got {list(parents)}")
    ref = local_rotations
    for arg, x in (("root_positions", root_positions), ("offsets", offsets)):
        if x.dtype != ref.dtype or x.device != ref.device:
            raise ValueError(
                f"{arg}: expected dtype {ref.dtype} on {ref.device} like local_rotations, got {x.dtype} on {x.device}"
            )

    world_rot: list[torch.Tensor] = [local_rotations[..., 0, :, :]]
    world_pos: list[torch.Tensor] = [root_positions]
    for j in range(1, num):
        p = parents[j]
        if per_frame:
            world_pos.append(world_pos[p] + (world_rot[p] @ offsets[..., j, :, None])[..., 0])
        else:
            world_pos.append(world_pos[p] + world_rot[p] @ offsets[j])
        world_rot.append(world_rot[p] @ local_rotations[..., j, :, :])
    positions = torch.stack(world_pos, dim=-2)
    if return_rotations:
        return positions, torch.stack(world_rot, dim=-3)
    return positions


def motion_joints(motion: Motion) -> torch.Tensor:
    """``(T, J, 3)`` world positions (metres) of all joints of ``motion`` (31 for CMU clips).

    Uses the per-frame ``motion.local_offsets`` when the file had position channels below the root.
    """
    return forward_kinematics(motion.root_positions, motion.local_rotations, motion.fk_offsets(), motion.parents)


def motion_end_sites(motion: Motion) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Joint positions and End Site positions of ``motion``, in metres, world frame.

    Returns:
        ``(joints, ends)``: joints ``(T, J, 3)`` as :func:`motion_joints`, and ``ends`` mapping
        each joint that has an End Site to its ``(T, 3)`` End Site positions.
    """
    joints, rotations = forward_kinematics(
        motion.root_positions, motion.local_rotations, motion.fk_offsets(), motion.parents, return_rotations=True
    )
    ends = {j: joints[:, j] + rotations[:, j] @ site.to(joints) for j, site in motion.end_sites.items()}
    return joints, ends


def motion_to_h36m(motion: Motion) -> torch.Tensor:
    """``(T, 17, 3)`` world positions (metres) in the :data:`~poselab.data.skeleton.H36M17` layout.

    Requires a CMU31 clip; the H36M ``Head`` is the ``Head`` End Site (top of the head). See
    :func:`~poselab.data.skeleton.cmu_to_h36m` for the joint-by-joint map.
    """
    if tuple(motion.joint_names) != CMU31.joint_names:
        raise ValueError(
            f"motion {motion.name!r}: expected the 31 CMU31 joints in file order, got {len(motion.joint_names)} "
            f"joints starting {list(motion.joint_names[:4])}"
        )
    head = CMU31.index("Head")
    if head not in motion.end_sites:
        raise ValueError(f"motion {motion.name!r}: expected an End Site on 'Head' (top of the head), found none")
    joints, ends = motion_end_sites(motion)
    points = torch.cat([joints, ends[head].unsqueeze(-2)], dim=-2)  # (T, 32, 3)
    assert points.shape[-2] == CMU_POINTS
    return cmu_to_h36m(points)


# ---------------------------------------------------------------------------------------------
# The clip collection


@dataclass(frozen=True)
class ClipInfo:
    """One row of ``index.csv``.

    Attributes:
        file: file name, e.g. ``"05_02.bvh"``. name: ``"05_02"``. subject, trial: CMU numbers.
        description: CMU's description. category: e.g. ``"dance/modern"``; activity: the text
        before the first ``/`` (``"dance"``). frames: frame count. fps: frames per second.
        proportions: ``"true"`` (real CMU bone vectors) or ``"short-torso"`` (see the data README).
    """

    file: str
    name: str
    subject: int
    trial: int
    description: str
    category: str
    activity: str
    frames: int
    fps: float
    proportions: str


_INDEX_COLUMNS = ("file", "subject", "trial", "cmu_description", "category", "frames", "fps", "proportions")


@functools.lru_cache(maxsize=4)
def _read_index(path: Path, mtime_ns: int) -> tuple[ClipInfo, ...]:
    del mtime_ns  # part of the cache key only: an edited index is read again
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _INDEX_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: expected columns {list(_INDEX_COLUMNS)}, missing {missing}")
        clips = []
        for line, row in enumerate(reader, start=2):
            try:
                clips.append(
                    ClipInfo(
                        file=row["file"],
                        name=Path(row["file"]).stem,
                        subject=int(row["subject"]),
                        trial=int(row["trial"]),
                        description=row["cmu_description"],
                        category=row["category"],
                        activity=row["category"].split("/")[0],
                        frames=int(row["frames"]),
                        fps=float(row["fps"]),
                        proportions=row["proportions"],
                    )
                )
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"{path}, line {line}: expected integer subject/trial/frames and numeric fps: {exc}"
                ) from None
    return tuple(clips)


def clip_index() -> list[ClipInfo]:
    """All clips listed in ``index.csv`` of :func:`mocap_dir`, in file order (a new list each call)."""
    path = mocap_dir() / "index.csv"
    if not path.is_file():
        raise FileNotFoundError(f"clip index not found: {path}; set ${_ENV} to the mocap data folder")
    return list(_read_index(path.resolve(), path.stat().st_mtime_ns))


def clip_names() -> list[str]:
    """Names of all clips (``"01_01"``, ...), in index order."""
    return [c.name for c in clip_index()]


@functools.lru_cache(maxsize=None)
def _load_cached(path: Path, mtime_ns: int) -> Motion:
    del mtime_ns  # part of the cache key only: an edited file is read again
    return load_bvh(path)


def load_clip(name: str) -> Motion:
    """Load clip ``name`` (e.g. ``"05_02"``) from :func:`mocap_dir`.

    Parsed once per file and cached; every call returns a fresh copy (cloned tensors), so
    callers may modify the result without affecting later calls.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: unknown clip (lists the valid names).
        FileNotFoundError: data folder, ``index.csv`` or the clip's file is missing.
        BVHError: the file is malformed or its frame count disagrees with ``index.csv``.
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a clip name string such as '05_02', got {type(name).__name__} {name!r}")
    clips = {c.name: c for c in clip_index()}
    check_choice("clip name", name, tuple(clips))
    info = clips[name]
    path = mocap_dir() / info.file
    if path.is_dir():
        raise IsADirectoryError(f"clip {name!r}: {path} listed in index.csv is a directory, expected a BVH file")
    if not path.is_file():
        raise FileNotFoundError(
            f"clip {name!r}: file {path} listed in index.csv is missing (data folder from ${_ENV} or the default)"
        )
    motion = _load_cached(path.resolve(), path.stat().st_mtime_ns)
    if motion.num_frames != info.frames:
        raise BVHError(f"{path}: expected {info.frames} frames (index.csv), found {motion.num_frames}")
    return motion.clone()


def clear_caches() -> None:
    """Forget cached clips and indexes (e.g. after changing ``$POSELAB_MOCAP_DIR`` contents)."""
    _load_cached.cache_clear()
    _read_index.cache_clear()
