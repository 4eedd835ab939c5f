"""Omniglot (Lake et al., 2015): load the official zip archives, cache 28x28 arrays, split characters.

Layout read: ``images_background.zip`` and ``images_evaluation.zip``, each holding
``<archive>/<Alphabet>/<characterNN>/<id>_<nn>.png`` (105x105 1-bit PNGs, 964 + 659 = 1623
characters, 20 drawings each). See ``docs/data.md`` for where the files go, the cache, and
exactly which characters form the train/val/test split (listed in ``docs/omniglot-split.csv``).

Run ``python -m bilevel.data --data-root DIR --write-split docs/omniglot-split.csv`` to
(re)write the split listing from the real data (``main`` below).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import os
import sys
import urllib.request
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import PIL
import torch
from PIL import Image
from tqdm.auto import tqdm

from .common import (
    DataError,
    atomic_torch_save,
    dir_is_writable,
    resolve_data_root,
    temp_path_beside,
    user_cache_dir,
)
from ..validation import check_int
from .episodes import ClassImages

__all__ = [
    "load_omniglot",
    "check_omniglot_source",
    "omniglot_splits",
    "OmniglotSplits",
    "resolve_data_root",
    "DataError",
    "OMNIGLOT_URLS",
]

ARCHIVES = ("images_background", "images_evaluation")  # class order: background first
OMNIGLOT_URLS = {
    f"{a}.zip": f"https://github.com/brendenlake/omniglot/raw/master/python/{a}.zip" for a in ARCHIVES
}
OFFICIAL_MD5 = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
SOURCE_SIZE = (105, 105)
_CACHE_FORMAT = "bilevel-omniglot-cache-v1"  # bump when the preprocessing changes
_SPLIT_SALT = "bilevel-omniglot-split-v1"


class OmniglotSplits(NamedTuple):
    """Disjoint character splits: ``train`` (rotations as extra classes by default), ``val``, ``test``."""

    train: ClassImages
    val: ClassImages
    test: ClassImages


# --------------------------------------------------------------------------- locating / download


def _find_archives(root: Path) -> tuple[Path, list[str]]:
    """Return (folder, missing archive file names), preferring ``root/omniglot`` over ``root``."""
    folders = [root / "omniglot", root]
    files = [f"{a}.zip" for a in ARCHIVES]
    for present_needed in (len(files), 1):  # a folder with both, else one with either
        for folder in folders:
            present = [f for f in files if (folder / f).is_file()]
            if len(present) >= present_needed:
                return folder, [f for f in files if f not in present]
    return folders[0], files


def _how_to_get(folder: Path) -> str:
    urls = "\n".join(f"  {u}" for u in OMNIGLOT_URLS.values())
    return (
        f"Download the two official archives\n{urls}\nand put both files in {folder}/ "
        "(or pass --data-root / set $BILEVEL_DATA to a folder whose omniglot/ subfolder holds them)."
    )


def _download(url: str, dest: Path, progress: bool) -> None:
    """Fetch ``url`` into ``dest`` through a temporary file beside it, then ``os.replace``."""
    tmp = temp_path_beside(dest)
    try:
        with open(tmp, "xb") as f, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=f"Downloading {dest.name}",
                disable=not progress,
            ) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _download_missing(root: Path, folder: Path, missing: list[str], progress: bool) -> None:
    for name in missing:
        dest = folder / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _download(OMNIGLOT_URLS[name], dest, progress)
        except Exception as err:  # URLError, HTTPError, timeouts, read-only folder, ...
            raise DataError(
                f"load_omniglot(data_root={str(root)!r}): {name} is missing and downloading it "
                f"from {OMNIGLOT_URLS[name]} failed ({type(err).__name__}: {err}). " + _how_to_get(folder)
            ) from err
        md5 = _file_digest(dest, "md5")
        if md5 != OFFICIAL_MD5[name]:
            warnings.warn(
                f"{dest}: md5 {md5} differs from the official {OFFICIAL_MD5[name]}; the file is "
                "still accepted if its content checks out (1623 characters x 20 105x105 PNGs)",
                UserWarning,
                stacklevel=3,
            )


# --------------------------------------------------------------------------- reading the archives


class _Character(NamedTuple):
    archive: str  # "images_background"
    alphabet: str
    character: str  # "character01"
    members: list[str]  # sorted zip member names of its drawings

    @property
    def name(self) -> str:
        return f"{self.archive}/{self.alphabet}/{self.character}"


def _open_archive(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(
            f"{path}: not a readable zip archive ({err}); the file is corrupt or truncated. "
            f"Delete it and download it again from {OMNIGLOT_URLS[path.name]}"
        ) from err


def _index_archive(zf: zipfile.ZipFile, path: Path, archive: str, drawings: int) -> list[_Character]:
    """List the characters of one archive in sorted (alphabet, character) order, checking layout."""
    groups: dict[tuple[str, str], set[str]] = {}
    for info in zf.infolist():
        parts = info.filename.split("/")
        if info.is_dir() or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
            continue
        if not parts[-1].lower().endswith(".png"):
            continue  # stray non-image files (Thumbs.db, README) are ignored
        if len(parts) != 4 or parts[0] != archive:
            raise DataError(
                f"{path}: unexpected entry {info.filename!r}; expected "
                f"{archive}/<Alphabet>/<character>/<file>.png (the official layout)"
            )
        groups.setdefault((parts[1], parts[2]), set()).add(info.filename)
    if not groups:
        raise DataError(f"{path}: holds no {archive}/<Alphabet>/<character>/*.png images")
    chars = []
    for (alphabet, character), members in sorted(groups.items()):
        if len(members) != drawings:
            raise DataError(
                f"{path}: {archive}/{alphabet}/{character} has {len(members)} PNGs, expected "
                f"{drawings}; the archive is incomplete. Download it again from "
                f"{OMNIGLOT_URLS[path.name]}"
            )
        chars.append(_Character(archive, alphabet, character, sorted(members)))
    return chars


def _decode_png(data: bytes, image_size: int) -> np.ndarray:
    """Decode one Omniglot PNG and return uint8 ``[image_size, image_size]``.

    Like MAML/iMAML: convert to 8-bit grayscale ("L": background 255, ink 0, the official
    polarity, not inverted) and resize with Pillow's LANCZOS filter. Raises ``ValueError``
    when the image is not 105x105.
    """
    with Image.open(io.BytesIO(data)) as im:
        if im.size != SOURCE_SIZE:
            raise ValueError(f"image is {im.size[0]}x{im.size[1]}, expected 105x105")
        gray = im.convert("L")
    return np.asarray(gray.resize((image_size, image_size), Image.Resampling.LANCZOS))


def _decode_archives(
    paths: dict[str, Path], image_size: int, expected_characters: int, drawings: int, progress: bool
) -> tuple[np.ndarray, list[str]]:
    """Check the archives' content and decode every drawing: uint8 ``[C, drawings, s, s]``, names."""
    with contextlib.ExitStack() as stack:
        zips = {a: stack.enter_context(_open_archive(p)) for a, p in paths.items()}
        chars = {a: _index_archive(zips[a], paths[a], a, drawings) for a in ARCHIVES}
        total = sum(len(c) for c in chars.values())
        if total != expected_characters:
            counts = ", ".join(f"{len(chars[a])} in {a}.zip" for a in ARCHIVES)
            raise DataError(
                f"{paths[ARCHIVES[0]].parent}: found {counts}, {total} characters in all; expected "
                f"{expected_characters} (964 + 659 in the official archives). One archive is "
                "incomplete or not Omniglot. " + _how_to_get(paths[ARCHIVES[0]].parent)
            )
        out = np.empty((total, drawings, image_size, image_size), dtype=np.uint8)
        names: list[str] = []
        with tqdm(total=total * drawings, desc="Decoding Omniglot", unit="img", disable=not progress) as bar:
            for a in ARCHIVES:
                for char in chars[a]:
                    i = len(names)
                    names.append(char.name)
                    for j, member in enumerate(char.members):
                        try:
                            out[i, j] = _decode_png(zips[a].read(member), image_size)
                        except Exception as err:  # CRC, zlib, PIL errors of every kind
                            raise DataError(
                                f"{paths[a]}: cannot decode {member} ({type(err).__name__}: {err}); "
                                f"the archive is corrupt. Download it again from "
                                f"{OMNIGLOT_URLS[paths[a].name]}"
                            ) from err
                    bar.update(drawings)
    return out, names


# --------------------------------------------------------------------------- the cache


def _read_cache(
    path: Path, expect: dict[str, Any], shape: tuple[int, ...]
) -> tuple[torch.Tensor, list[str]] | None:
    """Return (images, names) from a valid cache at ``path``; ``None`` if absent or stale."""
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


def _write_cache(candidates: list[Path], payload: dict[str, Any]) -> Path | None:
    """Write ``payload`` atomically to the first candidate folder that takes it; return the path."""
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


# --------------------------------------------------------------------------- public API


def _check_source(call: str, root: Path, download: bool) -> tuple[Path, list[str]]:
    """(folder, missing archives) after the cheap checks of :func:`check_omniglot_source`."""
    folder, missing = _find_archives(root)
    for name in ARCHIVES:
        path = folder / f"{name}.zip"
        if path.is_file():
            _open_archive(path).close()  # reads the central directory only
    if missing and not download:
        raise DataError(
            f"{call}(data_root={str(root)!r}, download=False): {' and '.join(missing)} not found "
            f"in {root / 'omniglot'} or {root}. " + _how_to_get(folder)
        )
    if missing:
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not dir_is_writable(existing):
            raise DataError(
                f"{call}(data_root={str(root)!r}): {' and '.join(missing)} not found in "
                f"{root / 'omniglot'} or {root}, and {existing} is read-only, so they cannot be "
                "downloaded there. " + _how_to_get(folder)
            )
    return folder, missing


def check_omniglot_source(data_root: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
    """Cheap checks before any work; returns the folder that holds (or will hold) the archives.

    Each archive present must open as a zip (its central directory is read; the content is
    checked by :func:`load_omniglot`); missing ones must be downloadable (``download`` and a
    writable folder). Nothing is downloaded or decoded.

    Raises:
        DataError: an archive is corrupt, or missing and cannot be downloaded; the message names
            the file and the fix.
    """
    return _check_source("load_omniglot", resolve_data_root(data_root), download)[0]


def load_omniglot(
    data_root: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = True,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    image_size: int = 28,
    expected_characters: int = 1623,
    drawings: int = 20,
) -> ClassImages:
    """Load all Omniglot characters as uint8 ``[1623, 20, 28, 28]`` images (background 255, ink 0).

    Class order is deterministic and independent of the file system: sorted by (archive:
    background then evaluation, alphabet, character folder) in Python string order; the
    drawings of a class are sorted by file name. ``names[i]`` is
    ``"<archive>/<Alphabet>/<characterNN>"``. Images are read straight from the zip archives,
    converted to grayscale and resized with Pillow LANCZOS from 105x105 (as MAML/iMAML do).

    The archives are looked for in ``<root>/omniglot/``, then ``<root>``, with
    ``root = resolve_data_root(data_root)``. Missing ones are downloaded when ``download``
    (official URLs, md5 compared and a warning given on mismatch). Content is always checked:
    ``expected_characters`` characters of exactly ``drawings`` 105x105 decodable PNGs.

    The decoded array is cached in ``omniglot_<s>x<s>.pt`` beside the archives, or, if that
    folder is read-only, in ``<user cache>/omniglot/`` under a name keyed by the archives'
    sha256 (``cache_dir`` overrides both). The cache records the archives' size and sha256 and is
    rebuilt when they change; later loads take well under a second.

    Args:
        data_root: folder holding ``omniglot/`` (default ``$BILEVEL_DATA`` or the user cache).
        download: fetch missing archives from the official repository.
        progress: show tqdm bars while downloading and decoding.
        cache_dir: folder for the preprocessed cache instead of the default places.
        image_size: side of the resized square images.
        expected_characters, drawings: the content check (override only for test data).

    Returns:
        ``ClassImages`` with ``images`` uint8 ``[expected_characters, drawings, s, s]``, no rotations.

    Raises:
        DataError: archives missing (and not downloadable), truncated, corrupt or incomplete.
    """
    call = "load_omniglot"
    check_int(call, "image_size", image_size, minimum=1, fix="Use e.g. image_size=28.")
    check_int(call, "expected_characters", expected_characters, minimum=1, fix="Keep the default 1623.")
    check_int(call, "drawings", drawings, minimum=1, fix="Keep the default 20.")
    root = resolve_data_root(data_root)
    folder, missing = _check_source(call, root, download)
    if missing:
        _download_missing(root, folder, missing, progress)
    paths = {a: folder / f"{a}.zip" for a in ARCHIVES}
    archives = {
        p.name: {"size": p.stat().st_size, "sha256": _file_digest(p, "sha256")} for p in paths.values()
    }
    expect = {
        "format": _CACHE_FORMAT,
        "archives": archives,
        "image_size": image_size,
        "drawings": drawings,
    }
    shape = (expected_characters, drawings, image_size, image_size)
    file_name = f"omniglot_{image_size}x{image_size}.pt"
    if cache_dir is not None:
        candidates = [Path(cache_dir).expanduser() / file_name]
    else:
        key = hashlib.sha256("".join(m["sha256"] for m in archives.values()).encode()).hexdigest()
        keyed = f"omniglot_{image_size}x{image_size}-{key[:16]}.pt"
        candidates = [folder / file_name, user_cache_dir() / "omniglot" / keyed]
    for path in candidates:
        hit = _read_cache(path, expect, shape)
        if hit is not None:
            return ClassImages(hit[0], hit[1])
    images, names = _decode_archives(paths, image_size, expected_characters, drawings, progress)
    tensor = torch.from_numpy(images)
    payload = {**expect, "images": tensor, "names": names, "pillow": PIL.__version__}
    _write_cache(candidates, payload)
    return ClassImages(tensor, names)


def _assign_splits(names: Sequence[str], num_train: int, num_val: int) -> list[str]:
    """Return "train" / "val" / "test" for each name.

    Split order: names sorted by ``sha256("bilevel-omniglot-split-v1:" + name)`` (hex). The first
    ``num_train - num_val`` are train, the next ``num_val`` val (the last ``num_val`` of the
    ``num_train`` meta-training characters), the rest test. A hash, unlike a seeded permutation,
    does not depend on any library's random number generator, nor on the other names.
    """
    order = sorted(
        range(len(names)), key=lambda i: hashlib.sha256(f"{_SPLIT_SALT}:{names[i]}".encode()).hexdigest()
    )
    split = ["test"] * len(names)
    for rank, i in enumerate(order[:num_train]):
        split[i] = "train" if rank < num_train - num_val else "val"
    return split


def omniglot_splits(
    data: ClassImages, *, num_train: int = 1200, num_val: int = 100, rotations: bool = True
) -> OmniglotSplits:
    """Split characters into meta-train / meta-val / meta-test, disjoint by character.

    ``num_train`` characters (1200) are for meta-training, of which the last ``num_val`` (100) in
    split order are held out for validation: train has 1100, val 100, test the remaining 423.
    Split order is by a salted sha256 of the character name (see ``docs/data.md``; the exact
    listing is ``docs/omniglot-split.csv``). With ``rotations`` each train character also appears
    rotated by 90, 180 and 270 degrees as 3 new classes (4400 train classes); val and test stay
    unrotated, so they measure generalisation to new characters, not to rotated copies of seen
    ones (call ``.with_rotations()`` on them to get the MAML code's rotated evaluation classes).
    Inside each split, classes keep the order of ``data``.

    Returns:
        ``OmniglotSplits(train, val, test)`` of ``ClassImages`` (train: 4 classes per character,
        class-major, when ``rotations``).
    """
    call = "omniglot_splits"
    if not isinstance(data, ClassImages):
        raise TypeError(
            f"{call}(data=...): expected the ClassImages of load_omniglot(), got {type(data).__name__}"
        )
    if any(data.rotations):
        raise ValueError(f"{call}(data=...): expected unrotated characters; pass load_omniglot()'s output")
    check_int(call, "num_train", num_train, minimum=1, fix="Keep the default 1200.")
    check_int(call, "num_val", num_val, minimum=0, fix="Keep the default 100.")
    if not num_val < num_train <= len(data):
        raise ValueError(
            f"{call}(num_train={num_train}, num_val={num_val}): expected num_val < num_train <= "
            f"{len(data)} (the number of characters); lower num_train or num_val"
        )
    split = _assign_splits(data.names, num_train, num_val)
    parts = {s: data.subset([i for i, x in enumerate(split) if x == s]) for s in ("train", "val", "test")}
    train = parts["train"].with_rotations() if rotations else parts["train"]
    return OmniglotSplits(train, parts["val"], parts["test"])


def write_split_csv(
    names: Sequence[str], dest: str | os.PathLike[str], *, num_train: int = 1200, num_val: int = 100
) -> None:
    """Write ``index,archive,alphabet,character,split`` rows (one per character, load order)."""
    split = _assign_splits(names, num_train, num_val)
    with open(dest, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["index", "archive", "alphabet", "character", "split"])
        for i, (name, s) in enumerate(zip(names, split)):
            w.writerow([i, *name.split("/"), s])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: load (and cache) Omniglot; optionally write the split listing."""
    parser = argparse.ArgumentParser(prog="python -m bilevel.data", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-root", default=None, help="folder with omniglot/ (default $BILEVEL_DATA or the user cache)"
    )
    parser.add_argument("--write-split", metavar="CSV", help="write the train/val/test listing here")
    parser.add_argument(
        "--no-download", action="store_true", help="fail instead of downloading missing archives"
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        data = load_omniglot(args.data_root, download=not args.no_download, progress=not args.no_progress)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    splits = omniglot_splits(data)
    print(f"{data}\ntrain {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)} classes")
    if args.write_split:
        write_split_csv(data.names, args.write_split)
        print(f"wrote {args.write_split}")
    return 0
