"""Omniglot's two official archives: where they are, whether they open, and downloading missing ones.

Invariant: an archive is only ever written to its final name by ``os.replace`` of a complete
temporary file beside it, so a killed download never leaves a partial ``.zip`` behind. The
archives are looked for in ``<root>/omniglot/``, then ``<root>``, with
``root = resolve_data_root(data_root)`` (``--data-root``, ``$BILEVEL_DATA``, ``~/.cache/bilevel``).
A downloaded archive whose md5 differs from the official one only warns: its content is checked
when it is decoded (:mod:`bilevel.data.omniglot_decode`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import urllib.request
import warnings
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from .common import DataError, dir_is_writable, resolve_data_root, temp_path_beside

__all__ = [
    "ARCHIVES",
    "OMNIGLOT_URLS",
    "OFFICIAL_MD5",
    "check_omniglot_source",
    "check_source",
    "download_missing",
    "file_digest",
    "find_archives",
    "how_to_get_archives",
    "open_archive",
]

ARCHIVES = ("images_background", "images_evaluation")  # class order: background first
OMNIGLOT_URLS = {
    f"{a}.zip": f"https://github.com/brendenlake/omniglot/raw/master/python/{a}.zip" for a in ARCHIVES
}
OFFICIAL_MD5 = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}


def find_archives(root: Path) -> tuple[Path, list[str]]:
    """Return (folder, missing archive file names), preferring ``root/omniglot`` over ``root``."""
    folders = [root / "omniglot", root]
    files = [f"{a}.zip" for a in ARCHIVES]
    for present_needed in (len(files), 1):  # a folder with both, else one with either
        for folder in folders:
            present = [f for f in files if (folder / f).is_file()]
            if len(present) >= present_needed:
                return folder, [f for f in files if f not in present]
    return folders[0], files


def how_to_get_archives(folder: Path) -> str:
    """The fix that every missing-or-broken-archive error ends with: the URLs and where to put them."""
    urls = "\n".join(f"  {u}" for u in OMNIGLOT_URLS.values())
    return (
        f"Download the two official archives\n{urls}\nand put both files in {folder}/ "
        "(or pass --data-root / set $BILEVEL_DATA to a folder whose omniglot/ subfolder holds them)."
    )


def open_archive(path: Path) -> zipfile.ZipFile:
    """Open one archive as a zip (reads its central directory); ``DataError`` naming the fix if not."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(
            f"{path}: not a readable zip archive ({err}); the file is corrupt or truncated. "
            f"Delete it and download it again from {OMNIGLOT_URLS[path.name]}"
        ) from err


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file's bytes with ``hashlib.new(algorithm)``, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


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


def download_missing(root: Path, folder: Path, missing: list[str], progress: bool) -> None:
    """Download each ``missing`` archive into ``folder``; warn (not fail) on an md5 mismatch.

    The md5 warning's ``stacklevel`` points at the caller of ``load_omniglot``, which calls this.
    """
    for name in missing:
        dest = folder / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _download(OMNIGLOT_URLS[name], dest, progress)
        except Exception as err:  # URLError, HTTPError, timeouts, read-only folder, ...
            raise DataError(
                f"load_omniglot(data_root={str(root)!r}): {name} is missing and downloading it "
                f"from {OMNIGLOT_URLS[name]} failed ({type(err).__name__}: {err}). "
                + how_to_get_archives(folder)
            ) from err
        md5 = file_digest(dest, "md5")
        if md5 != OFFICIAL_MD5[name]:
            warnings.warn(
                f"{dest}: md5 {md5} differs from the official {OFFICIAL_MD5[name]}; the file is "
                "still accepted if its content checks out (1623 characters x 20 105x105 PNGs)",
                UserWarning,
                stacklevel=3,
            )


def check_source(call: str, root: Path, download: bool) -> tuple[Path, list[str]]:
    """(folder, missing archives) after the cheap checks of :func:`check_omniglot_source`.

    ``call`` names the public function in the error messages.
    """
    folder, missing = find_archives(root)
    for name in ARCHIVES:
        path = folder / f"{name}.zip"
        if path.is_file():
            open_archive(path).close()  # reads the central directory only
    if missing and not download:
        raise DataError(
            f"{call}(data_root={str(root)!r}, download=False): {' and '.join(missing)} not found "
            f"in {root / 'omniglot'} or {root}. " + how_to_get_archives(folder)
        )
    if missing:
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not dir_is_writable(existing):
            raise DataError(
                f"{call}(data_root={str(root)!r}): {' and '.join(missing)} not found in "
                f"{root / 'omniglot'} or {root}, and {existing} is read-only, so they cannot be "
                "downloaded there. " + how_to_get_archives(folder)
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
    return check_source("load_omniglot", resolve_data_root(data_root), download)[0]
