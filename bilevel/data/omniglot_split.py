"""Omniglot's meta-train / meta-val / meta-test split of characters (listed in ``docs/omniglot-split.csv``).

Invariants: the three splits are disjoint by character and together hold every character; a
character's split depends only on its own name (rank of ``sha256("bilevel-omniglot-split-v1:" +
name)``), never on a random number generator, the other names or the file system; inside each
split, classes keep the order of the loaded data. Only train gets rotated copies by default.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Sequence
from typing import NamedTuple

from ..validation import check_int
from .episodes import ClassImages

__all__ = ["OmniglotSplits", "SPLIT_SALT", "assign_splits", "omniglot_splits", "write_split_csv"]

SPLIT_SALT = "bilevel-omniglot-split-v1"


class OmniglotSplits(NamedTuple):
    """Disjoint character splits: ``train`` (rotations as extra classes by default), ``val``, ``test``."""

    train: ClassImages
    val: ClassImages
    test: ClassImages


def assign_splits(names: Sequence[str], num_train: int, num_val: int) -> list[str]:
    """Return "train" / "val" / "test" for each name.

    Split order: names sorted by ``sha256("bilevel-omniglot-split-v1:" + name)`` (hex). The first
    ``num_train - num_val`` are train, the next ``num_val`` val (the last ``num_val`` of the
    ``num_train`` meta-training characters), the rest test. A hash, unlike a seeded permutation,
    does not depend on any library's random number generator, nor on the other names.
    """
    order = sorted(
        range(len(names)), key=lambda i: hashlib.sha256(f"{SPLIT_SALT}:{names[i]}".encode()).hexdigest()
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
    split = assign_splits(data.names, num_train, num_val)
    parts = {s: data.subset([i for i, x in enumerate(split) if x == s]) for s in ("train", "val", "test")}
    train = parts["train"].with_rotations() if rotations else parts["train"]
    return OmniglotSplits(train, parts["val"], parts["test"])


def write_split_csv(
    names: Sequence[str], dest: str | os.PathLike[str], *, num_train: int = 1200, num_val: int = 100
) -> None:
    """Write ``index,archive,alphabet,character,split`` rows (one per character, load order)."""
    split = assign_splits(names, num_train, num_val)
    with open(dest, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["index", "archive", "alphabet", "character", "split"])
        for i, (name, s) in enumerate(zip(names, split)):
            w.writerow([i, *name.split("/"), s])
