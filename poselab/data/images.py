"""Rendered person images: Anny bodies in CMU poses, two looks, square crops with 2D keypoints.

One image is made in six steps, all batched over images:

1. **Pose and body.** A frame of a CMU clip (clips drawn with the look's activity weights,
   :data:`ACTIVITY_WEIGHTS`), a body shape from the look's phenotype distribution
   (:meth:`poselab.data.body.BodyModel.sample_phenotypes`), posed and skinned by Anny
   (:mod:`poselab.data.body`): vertices, COCO-17 keypoints and H36M-17 joints in Anny's world
   (metres, Z up).
2. **Camera.** A camera on a sphere around the pelvis (:data:`CAMERA_RANGES`: azimuth,
   elevation, distance, roll per look), aimed at the pelvis (``look_at`` with up = +Z).
3. **Crop.** The square around the projected mesh, enlarged by the look's margin (and jittered
   for ``realistic``), becomes the ``S x S`` image: the intrinsics are those of the crop, so the
   person is rendered directly at crop resolution and keypoints come out in crop pixels
   (pixel (0, 0) is the centre of the top-left pixel).
4. **Render.** The depth-correct rasteriser of :mod:`poselab.data.render`, supersampled for
   anti-aliased edges, with the look's clothing colours and lighting (:mod:`poselab.data.looks`).
5. **Composite.** Person over the look's background, occluders on top, then the look's camera
   effects (exposure, colour cast, blur, sensor noise).
6. **Labels.** ``in_crop``: keypoints inside the image (the labelled ones, like COCO's
   ``v > 0``); ``visible``: in the crop, not hidden by the body itself (depth test against the
   rendered surface, :data:`VISIBILITY_TOLERANCE_M`) and not under an occluder.

Datasets (:func:`render_image_set`) are deterministic given their arguments and seed, and
cached on disk under :func:`cache_dir` (``$POSELAB_CACHE_DIR``, default ``~/.cache/poselab``),
keyed by every argument that changes the pixels and :data:`IMAGE_FORMAT_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from poselab.checks import check_choice, check_int, resolve_device
from poselab.data import looks as L
from poselab.data.body import body_model
from poselab.data.cameras import look_at
from poselab.data.lifting import EXCLUDED_PROPORTIONS, SPLIT_SUBJECTS
from poselab.data.mocap import clip_index, load_clip
from poselab.data.render import point_visibility, render_mesh, scale_intrinsics
from poselab.tensorfile import TensorFileError, load_tensor_file, save_tensor_file

__all__ = [
    "LOOKS",
    "IMAGE_SPLITS",
    "ACTIVITY_WEIGHTS",
    "CAMERA_RANGES",
    "CROP_MARGIN",
    "VISIBILITY_TOLERANCE_M",
    "IMAGE_FORMAT_VERSION",
    "CACHE_FORMAT",
    "PersonImages",
    "cache_dir",
    "image_split_clips",
    "render_people",
    "render_image_set",
]

LOOKS = L.LOOKS
"""``"synthetic"`` (SURREAL-like) and ``"realistic"`` (textures, clutter, occluders, camera effects)."""

IMAGE_SPLITS = ("train", "test")
"""``train``: every subject but the held-out ones; ``test``: the held-out subjects of the lifting
chapters' ``test_in`` split (2 and 124), doing the same kinds of motion."""

ACTIVITY_WEIGHTS = {
    "synthetic": {"walk": 3.0, "run": 3.0, "everyday": 3.0},
    "realistic": {"sports": 3.0, "martial arts": 3.0, "dance": 3.0, "acrobatics": 3.0, "jump": 3.0, "playground": 3.0},
}
"""Relative weight of a clip by its activity (the category before the first ``/``); unlisted
activities weigh 1. The synthetic look favours everyday motion, the realistic one sport and dance:
part of the domain gap is in the poses."""

CAMERA_RANGES = {
    "synthetic": dict(elevation_deg=(0.0, 20.0), distance_m=(4.0, 6.0), roll_deg=0.0, target_jitter_m=0.0),
    "realistic": dict(elevation_deg=(-10.0, 45.0), distance_m=(2.5, 8.0), roll_deg=10.0, target_jitter_m=0.15),
}
"""Camera placement per look: elevation above the pelvis's horizontal plane, distance to the
pelvis, roll about the optical axis (uniform in +-roll), aim jitter (uniform per axis). Azimuth is
uniform in [0, 360) for both."""

CROP_MARGIN = {"synthetic": (1.15, 1.15, 0.0), "realistic": (1.05, 1.35, 0.08)}
"""Crop side = the projected mesh's larger extent times a factor uniform in ``(low, high)``; the
crop centre is jittered by up to the third number times the side (like a detector's box)."""

VISIBILITY_TOLERANCE_M = 0.12
"""How far a keypoint may lie behind the rendered surface at its pixel and still count as
visible. Anny's COCO keypoints are joint centres, up to about 10 cm under the skin (hips,
shoulders seen from the front); a limb or torso in front is thicker than that."""

IMAGE_FORMAT_VERSION = 2
"""Bumped whenever the rendering or the cache file changes, so that cached datasets are rebuilt
(2: the cache is a safetensors file, :data:`CACHE_FORMAT`; 1 was a pickle)."""

CACHE_FORMAT = "poselab.images/2"
"""Format of a cached set (:mod:`poselab.tensorfile`): the :class:`PersonImages` tensors under their
field names; ``clip_names``, ``look`` and the cache key as JSON metadata. Nothing is unpickled."""

SUPERSAMPLE = 2
"""Sub-samples per pixel side when rendering the body (anti-aliased silhouettes)."""


@dataclass
class PersonImages:
    """A set of rendered person crops with their labels (CPU tensors).

    Attributes:
        images: ``(N, 3, S, S)`` uint8 RGB.
        masks: ``(N, S, S)`` bool, the person's silhouette (before occluders).
        keypoints: ``(N, 17, 2)`` float32 crop pixels, COCO-17 order
            (:data:`poselab.data.skeleton.COCO17`).
        in_crop: ``(N, 17)`` bool, keypoint inside the image (the labelled keypoints).
        visible: ``(N, 17)`` bool, in the crop and seen (not behind the body, not under an occluder).
        joints: ``(N, 17, 2)`` float32 crop pixels of the H36M-17 joints.
        joints_cam: ``(N, 17, 3)`` float32 metres, the H36M-17 joints in the camera frame.
        focal, center: ``(N, 2)`` float32 crop pixels, the crop's intrinsics.
        rotation, translation: ``(N, 3, 3)``, ``(N, 3)`` float32, Anny world -> camera.
        pose: ``(N, 31, 3, 4)`` float32 Anny pose parameters (top 3x4 blocks), with
            ``phenotypes`` ``(N, 6)`` enough to rebuild each mesh with
            :class:`poselab.data.body.BodyModel`.
        subject, clip, frame: ``(N,)`` int64: CMU subject, index into ``clip_names``, frame.
        clip_names: clip names.
        look: the look, one of :data:`LOOKS`.
    """

    images: torch.Tensor
    masks: torch.Tensor
    keypoints: torch.Tensor
    in_crop: torch.Tensor
    visible: torch.Tensor
    joints: torch.Tensor
    joints_cam: torch.Tensor
    focal: torch.Tensor
    center: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor
    pose: torch.Tensor
    phenotypes: torch.Tensor
    subject: torch.Tensor
    clip: torch.Tensor
    frame: torch.Tensor
    clip_names: tuple[str, ...]
    look: str

    _TENSORS = ("images", "masks", "keypoints", "in_crop", "visible", "joints", "joints_cam", "focal", "center", "rotation",
                "translation", "pose", "phenotypes", "subject", "clip", "frame")

    def __post_init__(self) -> None:
        check_choice("look", self.look, LOOKS)
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images: expected uint8 (N, 3, S, S), got {self.images.dtype} {tuple(self.images.shape)}")
        for name in self._TENSORS:
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.shape[0] != n:
                raise ValueError(f"PersonImages.{name}: expected a tensor with {n} rows (one per image)")
        self.clip_names = tuple(self.clip_names)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        """Image side ``S`` in pixels."""
        return int(self.images.shape[-1])

    def subset(self, index) -> PersonImages:
        """The images at ``index`` (a slice, an int64 index tensor or a bool mask)."""
        return PersonImages(**{name: getattr(self, name)[index] for name in self._TENSORS},
                            clip_names=self.clip_names, look=self.look)

    def float_images(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """``(N, 3, S, S)`` float32 in [0, 1] on ``device``."""
        return self.images.to(resolve_device(device)).float().div_(255.0)

    def to_dict(self) -> dict:
        out = {name: getattr(self, name) for name in self._TENSORS}
        out.update(clip_names=list(self.clip_names), look=self.look)
        return out

    def __repr__(self) -> str:
        return (f"PersonImages(look={self.look!r}, n={len(self)}, size={self.size}, "
                f"subjects={sorted(set(self.subject.tolist()))}, clips={len(set(self.clip.tolist()))})")


def cache_dir() -> Path:
    """Where rendered datasets are cached: ``$POSELAB_CACHE_DIR`` or ``~/.cache/poselab``."""
    root = os.environ.get("POSELAB_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "poselab"


def image_split_clips(split: str) -> list:
    """The clips of an image split (:data:`IMAGE_SPLITS`), short-torso clips left out.

    Returns:
        ``ClipInfo`` rows of :func:`poselab.data.mocap.clip_index`.
    """
    check_choice("split", split, IMAGE_SPLITS)
    held_out = set(SPLIT_SUBJECTS["test_in"])
    rows = [c for c in clip_index() if c.proportions not in EXCLUDED_PROPORTIONS]
    if split == "train":
        return [c for c in rows if c.subject not in held_out]
    return [c for c in rows if c.subject in held_out]


def _clip_weights(clips: list, look: str) -> torch.Tensor:
    weights = ACTIVITY_WEIGHTS[look]
    return torch.tensor([weights.get(c.activity, 1.0) for c in clips], dtype=torch.float64)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _cameras(pelvis: torch.Tensor, look: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """World -> camera ``(R (B, 3, 3), t (B, 3))`` around each pelvis ``(B, 3)`` (Anny world, Z up)."""
    n = pelvis.shape[0]
    ranges = CAMERA_RANGES[look]
    azimuth = _uniform(n, 0.0, 2 * math.pi, generator)
    elevation = torch.deg2rad(_uniform(n, *ranges["elevation_deg"], generator))
    distance = _uniform(n, *ranges["distance_m"], generator)
    roll = torch.deg2rad(_uniform(n, -ranges["roll_deg"], ranges["roll_deg"], generator))
    jitter = ranges["target_jitter_m"] * (2 * torch.rand(n, 3, generator=generator, dtype=torch.float64) - 1)
    target = pelvis.double().cpu() + jitter
    offset = torch.stack([torch.cos(elevation) * torch.cos(azimuth), torch.cos(elevation) * torch.sin(azimuth),
                          torch.sin(elevation)], dim=-1)
    R, t = look_at(target + distance[:, None] * offset, target, up=(0.0, 0.0, 1.0), roll=roll)
    return R, t


def _crop_intrinsics(normalised: torch.Tensor, size: int, look: str, generator: torch.Generator):
    """Crop intrinsics from the mesh's normalised projections ``(B, V, 2)`` (x/z, y/z).

    Returns ``(focal (B, 2), center (B, 2))`` in crop pixels of an ``S x S`` image.
    """
    n = normalised.shape[0]
    low, high = normalised.amin(dim=1), normalised.amax(dim=1)  # (B, 2)
    mid, extent = 0.5 * (low + high), (high - low).amax(dim=-1)
    m_low, m_high, shift = CROP_MARGIN[look]
    side = extent * _uniform(n, m_low, m_high, generator).to(extent)
    mid = mid + shift * side[:, None] * (2 * torch.rand(n, 2, generator=generator, dtype=torch.float64).to(mid) - 1)
    scale = size / side  # crop pixels per normalised unit
    focal = torch.stack([scale, scale], dim=-1)
    # u = scale * (x/z - (mid - side/2)) - 0.5: the crop's left edge is pixel -0.5.
    center = scale[:, None] * (side[:, None] / 2 - mid) - 0.5
    return focal, center


def render_people(clips: list, count: int, look: str, size: int, generator: torch.Generator,
                  device: str | torch.device = "auto") -> PersonImages:
    """Render ``count`` person crops of ``look`` from frames of ``clips`` (one batch).

    Args:
        clips: ``ClipInfo`` rows to draw frames from (:func:`image_split_clips`).
        count: number of images.
        look: one of :data:`LOOKS` (also the body-shape, activity and camera domain).
        size: crop side ``S`` in pixels (>= 16).
        generator: CPU generator; every random choice is drawn from it, in a fixed order.
        device: where Anny and the renderer run (``"auto"``: CUDA when available).

    Returns:
        :class:`PersonImages` on the CPU.
    """
    check_int("count", count)
    check_int("size", size, 16)
    check_choice("look", look, LOOKS)
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError(f"generator: expected a CPU torch.Generator, got {generator!r}")
    if not clips:
        raise ValueError("clips: expected at least one clip")
    dev = resolve_device(device)
    body = body_model(dev)
    # 1. frames and bodies
    choice = torch.multinomial(_clip_weights(clips, look), count, replacement=True, generator=generator)
    position = torch.rand(count, generator=generator, dtype=torch.float64)
    frame = (position * torch.tensor([clips[i].frames for i in choice.tolist()])).long()
    phenotypes = body.sample_phenotypes(count, look, generator)
    pose = torch.empty(count, 31, 4, 4, dtype=body.dtype, device=dev)
    for c in choice.unique().tolist():  # one call per clip: the mapping is batched over frames
        rows = (choice == c).nonzero().squeeze(1)
        pose[rows.to(dev)] = body.pose_parameters(load_clip(clips[c].name), frame[rows], phenotypes[rows.to(dev)])
    out = body(pose, phenotypes)
    # 2-3. camera and crop
    R, t = _cameras(pose[:, 0, :3, 3], look, generator)
    R, t = R.to(dev, body.dtype), t.to(dev, body.dtype)

    def to_cam(points):
        return torch.einsum("bij,bnj->bni", R, points) + t[:, None]

    verts = to_cam(out.vertices)
    focal, center = _crop_intrinsics(verts[..., :2] / verts[..., 2:], size, look, generator)
    focal, center = focal.to(dev, body.dtype), center.to(dev, body.dtype)
    # 4. render
    params = L.sample_look(look, count, generator)
    params = params.to(dev, body.dtype)
    colours = L.clothing_colours(params, body.rest_vertices(phenotypes), body.vertex_regions)
    light_dir, ambient, diffuse = L.lighting(params)
    person = render_mesh(verts, body.faces, focal, center, (size, size), colours, light_dir, ambient, diffuse,
                         supersample=SUPERSAMPLE, cull_backfaces=True)
    # 5. composite
    occluder_rgb, occluder_mask = L.occluders(params, (size, size))
    image = L.composite(person.rgb, person.coverage, L.backgrounds(params, (size, size)), occluder_rgb, occluder_mask)
    image = L.post_process(params, image)
    # 6. labels
    kp_cam, joints_cam = to_cam(out.keypoints), to_cam(out.joints)

    def project(points):
        return points[..., :2] / points[..., 2:] * focal[:, None] + center[:, None]

    keypoints = project(kp_cam)
    in_crop = ((keypoints > -0.5) & (keypoints < size - 0.5)).all(dim=-1) & (kp_cam[..., 2] > 0)
    fine_focal, fine_center = scale_intrinsics(focal, center, SUPERSAMPLE)
    seen = point_visibility(kp_cam, person.fragments, fine_focal, fine_center, tolerance_m=VISIBILITY_TOLERANCE_M)
    pixel = keypoints.round().long().clamp(0, size - 1)
    under = occluder_mask[torch.arange(count, device=dev)[:, None], pixel[..., 1], pixel[..., 0]]
    visible = in_crop & seen & ~under
    cpu = dict(dtype=torch.float32, device="cpu")
    return PersonImages(
        images=(image.clamp(0, 1) * 255).round().to(torch.uint8).cpu(), masks=person.mask.cpu(),
        keypoints=keypoints.to(**cpu), in_crop=in_crop.cpu(), visible=visible.cpu(),
        joints=project(joints_cam).to(**cpu), joints_cam=joints_cam.to(**cpu),
        focal=focal.to(**cpu), center=center.to(**cpu), rotation=R.to(**cpu), translation=t.to(**cpu),
        pose=pose[:, :, :3, :].to(**cpu), phenotypes=phenotypes.to(**cpu),
        subject=torch.tensor([clips[i].subject for i in choice.tolist()]), clip=choice.clone(), frame=frame,
        clip_names=tuple(c.name for c in clips), look=look,
    )


def _cat(parts: list[PersonImages]) -> PersonImages:
    first = parts[0]
    return PersonImages(**{name: torch.cat([getattr(p, name) for p in parts]) for name in PersonImages._TENSORS},
                        clip_names=first.clip_names, look=first.look)


def render_image_set(split: str, look: str, count: int, size: int = 64, seed: int = 0, *,
                     batch_size: int = 64, device: str | torch.device = "auto", cache: bool = True,
                     progress: bool = True) -> PersonImages:
    """A deterministic set of ``count`` rendered crops of one split and look (cached on disk).

    Args:
        split: ``"train"`` or ``"test"`` (:data:`IMAGE_SPLITS`; split by subject).
        look: ``"synthetic"`` or ``"realistic"``.
        count: number of images.
        size: crop side in pixels.
        seed: the set's seed; sets of different seeds, looks or splits are independent.
        batch_size: images rendered at once (memory: about 20 MB per image at 64 px on CPU).
        device: where to render; the pixels are the same up to float rounding on CPU and CUDA,
            but the cache is keyed by the device type so that a set never mixes the two.
        cache: read/write ``cache_dir() / "images"`` (safetensors files, :data:`CACHE_FORMAT`; a
            damaged or foreign file there is deleted, with a warning, and the set rendered again).
        progress: a ``tqdm`` bar over batches.

    Returns:
        :class:`PersonImages` on the CPU. Image ``i`` depends on ``(split, look, size, seed,
        batch_size)`` only, not on ``count``'s other images beyond its batch.
    """
    check_choice("split", split, IMAGE_SPLITS)
    check_choice("look", look, LOOKS)
    check_int("count", count)
    check_int("size", size, 16)
    check_int("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {seed!r}")
    dev = resolve_device(device)
    key = dict(split=split, look=look, count=count, size=size, seed=seed, batch_size=batch_size,
               device=dev.type, version=IMAGE_FORMAT_VERSION, supersample=SUPERSAMPLE)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / "images" / f"{split}_{look}_{size}px_{count}_{digest}.safetensors"
    if cache and path.exists():
        cached = _read_cache(path, key)
        if cached is not None:
            return cached
    clips = image_split_clips(split)
    parts = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=count, desc=f"rendering {split}/{look}", unit="img")
    for index, start in enumerate(range(0, count, batch_size)):
        # One generator per batch, seeded from (seed, batch): a batch does not depend on the others.
        g = torch.Generator().manual_seed(_batch_seed(seed, split, look, index))
        parts.append(render_people(clips, min(batch_size, count - start), look, size, g, dev))
        if bar is not None:
            bar.update(len(parts[-1]))
    if bar is not None:
        bar.close()
    images = _cat(parts)
    if cache:
        save_tensor_file(path, {name: getattr(images, name) for name in PersonImages._TENSORS},
                         {"clip_names": list(images.clip_names), "look": images.look, "key": key}, format=CACHE_FORMAT)
    return images


def _read_cache(path: Path, key: dict) -> PersonImages | None:
    """The cached set at ``path``, or ``None`` (with a warning, the file deleted) when the file is
    damaged, foreign or of another key: the caller renders the set again and rewrites it."""
    try:
        tensors, meta = load_tensor_file(path, format=CACHE_FORMAT, what="image cache",
                                         recover="it is deleted and the set is rendered again")
        if meta.get("key") != key or set(tensors) != set(PersonImages._TENSORS):
            raise TensorFileError(f"image cache {str(path)!r} holds another set (key {meta.get('key')!r}, "
                                  f"fields {sorted(tensors)}); it is deleted and the set is rendered again")
        return PersonImages(**tensors, clip_names=meta["clip_names"], look=meta["look"])
    except (TensorFileError, KeyError, TypeError, ValueError) as exc:
        if path.is_dir():
            raise TensorFileError(f"image cache {str(path)!r} is a folder, not a cached set; remove it, or pass "
                                  f"cache=False") from exc
        message = (str(exc) if isinstance(exc, TensorFileError) else
                   f"image cache {str(path)!r} could not be used ({exc}); it is deleted and the set is rendered again")
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            raise TensorFileError(f"{message}, but it could not be deleted ({err}); delete it by hand, or pass "
                                  f"cache=False") from exc
        warnings.warn(message, stacklevel=3)
        return None


def _batch_seed(seed: int, split: str, look: str, index: int) -> int:
    text = f"{seed}/{split}/{look}/{index}".encode()
    return int.from_bytes(hashlib.sha1(text).digest()[:7], "little")
