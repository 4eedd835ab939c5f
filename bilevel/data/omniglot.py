"""Omniglot (Lake et al., 2015): load the official zip archives, cache 28x28 arrays, split characters.

Layout read: ``images_background.zip`` and ``images_evaluation.zip``, each holding
``<archive>/<Alphabet>/<characterNN>/<id>_<nn>.png`` (105x105 1-bit PNGs, 964 + 659 = 1623
characters, 20 drawings each). See ``docs/data.md`` for where the files go, the cache, and
exactly which characters form the train/val/test split (listed in ``docs/omniglot-split.csv``).

This module is the entry point, :func:`load_omniglot`, which reads like the steps it takes;
each step is its own module:

- :mod:`bilevel.data.omniglot_download`: find, check and download the two archives;
- :mod:`bilevel.data.omniglot_decode`: check the archives' content and decode the PNGs;
- :mod:`bilevel.data.omniglot_cache`: the cache of decoded arrays, keyed by the archives' sha256;
- :mod:`bilevel.data.omniglot_split`: the train/val/test split of characters.

Their public names are re-exported here, so ``from bilevel.data.omniglot import ...`` keeps working.
Run ``python -m bilevel.data --data-root DIR --write-split docs/omniglot-split.csv`` to
(re)write the split listing from the real data (``main`` below).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torch

from ..validation import check_int
from .common import DataError, resolve_data_root
from .episodes import ClassImages
from .omniglot_cache import cache_candidates, cache_identity, read_cache, write_cache
from .omniglot_decode import SOURCE_SIZE as SOURCE_SIZE  # re-exported, as is OFFICIAL_MD5
from .omniglot_decode import decode_archives
from .omniglot_download import OFFICIAL_MD5 as OFFICIAL_MD5
from .omniglot_download import (
    ARCHIVES,
    OMNIGLOT_URLS,
    check_omniglot_source,
    check_source,
    download_missing,
)
from .omniglot_split import OmniglotSplits, omniglot_splits, write_split_csv

__all__ = [
    "load_omniglot",
    "check_omniglot_source",
    "omniglot_splits",
    "OmniglotSplits",
    "resolve_data_root",
    "DataError",
    "OMNIGLOT_URLS",
]


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
    folder, missing = check_source(call, root, download)
    if missing:
        download_missing(root, folder, missing, progress)
    paths = {a: folder / f"{a}.zip" for a in ARCHIVES}
    identity = cache_identity(paths, image_size, drawings)
    shape = (expected_characters, drawings, image_size, image_size)
    candidates = cache_candidates(identity, folder, cache_dir)
    for path in candidates:
        hit = read_cache(path, identity, shape)
        if hit is not None:
            return ClassImages(hit[0], hit[1])
    images, names = decode_archives(paths, image_size, expected_characters, drawings, progress)
    tensor = torch.from_numpy(images)
    write_cache(candidates, identity, tensor, names)
    return ClassImages(tensor, names)


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
