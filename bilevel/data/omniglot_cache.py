"""The cache of decoded Omniglot: ``omniglot_<s>x<s>.pt`` beside the archives, else in the user cache.

Invariant: a cache is used only if it records exactly the archives' sizes and sha256s, the cache
format, the image size and the number of drawings, and holds a uint8 tensor of the expected
shape; anything else (absent, unreadable, stale) means decode again. Writes are atomic
(``atomic_torch_save``), so a killed run never leaves a half-written cache, and a folder that
cannot take the cache only warns. Bump ``CACHE_FORMAT`` when the preprocessing changes.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import PIL
import torch

from .common import atomic_torch_save, dir_is_writable, user_cache_dir
from .omniglot_download import file_digest

__all__ = ["CACHE_FORMAT", "cache_candidates", "cache_identity", "read_cache", "write_cache"]

CACHE_FORMAT = "bilevel-omniglot-cache-v1"  # bump when the preprocessing changes


def cache_identity(paths: dict[str, Path], image_size: int, drawings: int) -> dict[str, Any]:
    """What a valid cache must record: format, each archive's size and sha256, image size, drawings."""
    archives = {
        p.name: {"size": p.stat().st_size, "sha256": file_digest(p, "sha256")} for p in paths.values()
    }
    return {
        "format": CACHE_FORMAT,
        "archives": archives,
        "image_size": image_size,
        "drawings": drawings,
    }


def cache_candidates(
    identity: dict[str, Any], folder: Path, cache_dir: str | os.PathLike[str] | None
) -> list[Path]:
    """Where the cache may be, in the order tried: ``cache_dir`` alone, else beside the archives,
    then ``<user cache>/omniglot/`` under a name keyed by the archives' sha256s."""
    image_size = identity["image_size"]
    file_name = f"omniglot_{image_size}x{image_size}.pt"
    if cache_dir is not None:
        return [Path(cache_dir).expanduser() / file_name]
    key = hashlib.sha256("".join(m["sha256"] for m in identity["archives"].values()).encode()).hexdigest()
    keyed = f"omniglot_{image_size}x{image_size}-{key[:16]}.pt"
    return [folder / file_name, user_cache_dir() / "omniglot" / keyed]


def read_cache(
    path: Path, expect: dict[str, Any], shape: tuple[int, ...]
) -> tuple[torch.Tensor, list[str]] | None:
    """Return (images, names) from a valid cache at ``path``; ``None`` if absent or stale.

    The unreadable-cache warning's ``stacklevel`` points at the caller of ``load_omniglot``.
    """
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable cache is rebuilt, whatever the reason
        warnings.warn(f"ignoring unreadable Omniglot cache {path} ({err}); rebuilding it", stacklevel=3)
        return None
    if not isinstance(payload, dict) or any(payload.get(k) != v for k, v in expect.items()):
        return None  # other archives or other preprocessing: stale
    images, names = payload.get("images"), payload.get("names")
    if (
        not isinstance(images, torch.Tensor)
        or images.dtype != torch.uint8
        or tuple(images.shape) != shape
        or not isinstance(names, list)
        or len(names) != shape[0]
    ):
        return None
    return images, names


def write_cache(
    candidates: list[Path], identity: dict[str, Any], images: torch.Tensor, names: list[str]
) -> Path | None:
    """Save ``identity`` with the images, names and Pillow version to the first candidate that
    takes it (atomically); return its path, or ``None`` after a warning if none does."""
    payload = {**identity, "images": images, "names": names, "pillow": PIL.__version__}
    errors = []
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not dir_is_writable(path.parent):
                errors.append(f"{path.parent} is read-only")
                continue
            atomic_torch_save(payload, path)
            return path
        except OSError as err:
            errors.append(f"{path}: {err}")
    warnings.warn(
        "could not write the Omniglot cache (" + "; ".join(errors) + "); the next load will "
        "decode the PNGs again",
        stacklevel=3,
    )
    return None
