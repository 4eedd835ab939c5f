"""Decode Omniglot's archives into one uint8 array ``[characters, drawings, s, s]`` and the class names.

Invariant: the class order depends only on the names inside the archives, never on the file
system or the order of zip entries: characters sorted by (archive: background then evaluation,
alphabet, character folder) in Python string order, drawings sorted by member name. The content
is checked on every decode (layout, ``drawings`` PNGs per character, ``expected_characters`` in
all, 105x105, CRC); anything else raises ``DataError`` naming the archive, the entry and the fix.
"""

from __future__ import annotations

import contextlib
import io
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .common import DataError
from .omniglot_download import ARCHIVES, OMNIGLOT_URLS, how_to_get_archives, open_archive

__all__ = ["SOURCE_SIZE", "decode_archives", "decode_png"]

SOURCE_SIZE = (105, 105)


class _Character(NamedTuple):
    archive: str  # "images_background"
    alphabet: str
    character: str  # "character01"
    members: list[str]  # sorted zip member names of its drawings

    @property
    def name(self) -> str:
        return f"{self.archive}/{self.alphabet}/{self.character}"


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


def decode_png(data: bytes, image_size: int) -> np.ndarray:
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


def decode_archives(
    paths: dict[str, Path], image_size: int, expected_characters: int, drawings: int, progress: bool
) -> tuple[np.ndarray, list[str]]:
    """Check the archives' content and decode every drawing: uint8 ``[C, drawings, s, s]``, names.

    ``paths`` maps each name of ``ARCHIVES`` to its zip file; ``names[i]`` is
    ``"<archive>/<Alphabet>/<characterNN>"`` for row ``i``.
    """
    with contextlib.ExitStack() as stack:
        zips = {a: stack.enter_context(open_archive(p)) for a, p in paths.items()}
        chars = {a: _index_archive(zips[a], paths[a], a, drawings) for a in ARCHIVES}
        total = sum(len(c) for c in chars.values())
        if total != expected_characters:
            counts = ", ".join(f"{len(chars[a])} in {a}.zip" for a in ARCHIVES)
            raise DataError(
                f"{paths[ARCHIVES[0]].parent}: found {counts}, {total} characters in all; expected "
                f"{expected_characters} (964 + 659 in the official archives). One archive is "
                "incomplete or not Omniglot. " + how_to_get_archives(paths[ARCHIVES[0]].parent)
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
                            out[i, j] = decode_png(zips[a].read(member), image_size)
                        except Exception as err:  # CRC, zlib, PIL errors of every kind
                            raise DataError(
                                f"{paths[a]}: cannot decode {member} ({type(err).__name__}: {err}); "
                                f"the archive is corrupt. Download it again from "
                                f"{OMNIGLOT_URLS[paths[a].name]}"
                            ) from err
                    bar.update(drawings)
    return out, names
