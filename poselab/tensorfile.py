"""Tensor files that load without running code: safetensors plus JSON metadata, written atomically.

poselab never unpickles a file it wrote to disk (a crafted pickle runs arbitrary code when it
is loaded). Caches and checkpoints that hold more than plain tensors are stored as one
`safetensors <https://huggingface.co/docs/safetensors>`_ file:

- the tensors under their names (CPU, contiguous; safetensors keeps dtype and shape exactly);
- their non-tensor fields as one JSON document in the safetensors metadata (key ``"poselab"``),
  with a ``"format"`` string naming what the file is, and the SHA-256 of every tensor so that
  a file damaged on disk is refused instead of loading wrong numbers.

Writes go to a temp file in the same folder, are flushed to disk (``fsync``) and then renamed
over the target (``os.replace``): a reader, or a crash, sees the old file or the new one, never
half of one. :func:`load_tensor_file` turns every way a file can be wrong (truncated, not a
safetensors file, another format, a damaged tensor) into a :class:`TensorFileError` that names the
file and says how to recover.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["TensorFileError", "save_tensor_file", "load_tensor_file", "tensor_sha256"]

META_KEY = "poselab"


class TensorFileError(ValueError):
    """A tensor file that cannot be used: unreadable, of another format, or damaged."""


def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 (hex) of a tensor's dtype, shape and every byte of its values.

    The bytes are those of a CPU contiguous copy, so the digest is the same on every device and
    for every memory layout; two tensors have the same digest exactly when their dtypes, shapes and bits
    agree (so ``0.0`` and ``-0.0`` differ, and NaNs with the same bits agree). Draws no random numbers.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor_sha256: expected a torch.Tensor, got {type(tensor).__name__}")
    digest = hashlib.sha256(f"{tensor.dtype}/{list(tensor.shape)}/".encode())
    flat = tensor.detach().to("cpu").resolve_conj().resolve_neg().contiguous().reshape(-1)
    if flat.numel():
        digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _cpu_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, storages = {}, set()
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise TypeError(f"save_tensor_file: expected {{str: torch.Tensor}}, got {name!r}: {type(t).__name__}")
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in storages:  # safetensors stores each tensor on its own
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def save_tensor_file(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                     *, format: str) -> None:
    """Write ``tensors`` and the JSON-serialisable ``meta`` to ``path`` atomically.

    ``format`` (e.g. ``"poselab.ssl_collapse/2"``) is stored with ``meta`` and checked by
    :func:`load_tensor_file`. The parent folder is created when missing.
    """
    path = Path(path)
    cpu = _cpu_tensors(tensors)
    doc = {"format": format, "meta": dict(meta), "sha256": {name: tensor_sha256(t) for name, t in cpu.items()}}
    text = json.dumps(doc, allow_nan=True)  # floats round-trip exactly; NaN/inf as JSON extensions
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(cpu, str(tmp), metadata={META_KEY: text})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_tensor_file(path: str | os.PathLike, *, format: str, what: str = "file",
                     recover: str = "delete it and run again") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`save_tensor_file` with this ``format``: ``(tensors, meta)``.

    Tensors come back on the CPU, bitwise equal to the saved ones. Nothing in the file is
    executed. Raises ``FileNotFoundError`` when ``path`` does not exist and
    :class:`TensorFileError` (a ``ValueError``) when it is not such a file, has another format, or
    a tensor does not match its stored SHA-256; the message names the file, the ``what``
    (e.g. ``"checkpoint"``) and ends with ``recover`` (what the user should do).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r}: no such file")
    if path.is_dir():
        raise TensorFileError(f"{what} {str(path)!r} is a folder, not a file; {recover}")

    def fail(reason: str) -> TensorFileError:
        return TensorFileError(f"{what} {str(path)!r} could not be read ({reason}); {recover}")

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # truncated, empty, a pickle or any other foreign file
        raise fail(f"not a safetensors file or truncated: {exc}") from exc
    try:
        doc = json.loads(header[META_KEY])
    except (KeyError, TypeError, ValueError) as exc:
        raise fail("no poselab metadata: it was not written by poselab") from exc
    if not isinstance(doc, dict) or doc.get("format") != format:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise fail(f"expected format {format!r}, found {found!r}")
    hashes = doc.get("sha256")
    if not isinstance(hashes, dict) or set(hashes) != set(tensors) or not isinstance(doc.get("meta"), dict):
        raise fail("its table of contents does not match its tensors")
    damaged = [name for name, t in tensors.items() if tensor_sha256(t) != hashes[name]]
    if damaged:
        raise fail(f"tensor(s) {', '.join(sorted(damaged)[:5])} do not match their SHA-256: the file is damaged")
    return tensors, doc["meta"]
