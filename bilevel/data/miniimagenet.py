"""mini-ImageNet (Vinyals et al., 2016; Ravi & Larochelle split): load user-supplied files.

Two formats are read (see ``docs/data.md``):

(a) Ravi & Larochelle: ``train.csv``, ``val.csv``, ``test.csv`` (header ``filename,label``) next
    to an ``images/`` folder of JPEGs; images that are not 84x84 are resized with LANCZOS.
(b) The pickle caches ``mini-imagenet-cache-{train,val,test}.pkl`` used by learn2learn and
    torchmeta: a dict with ``image_data`` uint8 ``[N, 84, 84, 3]`` and ``class_dict``
    ``{class_name: [indices into image_data]}``.
"""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .common import DataError, resolve_data_root
from .episodes import ClassImages

__all__ = ["load_miniimagenet", "check_miniimagenet_source"]

SPLITS = ("train", "val", "test")
IMAGE_SIZE = 84
_SUBFOLDERS = ("", "miniimagenet", "mini-imagenet")


def _stack_classes(call: str, source: Path, groups: dict[str, list]) -> list[str]:
    """Return the class names sorted; raise unless every class has the same number of images."""
    if not groups:
        raise DataError(f"{call}: {source} lists no images")
    sizes = {len(v) for v in groups.values()}
    if len(sizes) != 1:
        counts = ", ".join(f"{k}: {len(v)}" for k, v in sorted(groups.items())[:5])
        raise DataError(
            f"{call}: {source}: classes have different numbers of images ({counts}, ...); "
            "expected the same number per class (600 in mini-ImageNet)"
        )
    return sorted(groups)


def _load_pickle(call: str, path: Path) -> ClassImages:
    try:
        with open(path, "rb") as f:
            payload = pickle.load(f)  # the user's own file: pickle is this format's container
    except Exception as err:
        raise DataError(
            f"{call}: cannot read {path} ({type(err).__name__}: {err}); the file is corrupt or truncated"
        ) from err
    if not isinstance(payload, dict) or "image_data" not in payload or "class_dict" not in payload:
        raise DataError(
            f"{call}: {path} is not a mini-ImageNet cache: expected a dict with 'image_data' and 'class_dict'"
        )
    data = np.asarray(payload["image_data"])
    if data.dtype != np.uint8 or data.ndim != 4 or data.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise DataError(
            f"{call}: {path}: image_data is {data.dtype} {data.shape}, expected uint8 [N, 84, 84, 3]"
        )
    groups = {str(k): sorted(int(i) for i in v) for k, v in payload["class_dict"].items()}
    names = _stack_classes(call, path, groups)
    index = np.array([groups[n] for n in names])  # [C, n]
    if index.min() < 0 or index.max() >= len(data):
        raise DataError(f"{call}: {path}: class_dict indices outside image_data's {len(data)} images")
    images = torch.from_numpy(data[index]).permute(0, 1, 4, 2, 3).contiguous()
    return ClassImages(images, names)


def _load_csv(call: str, csv_path: Path, image_dir: Path, progress: bool) -> ClassImages:
    groups: dict[str, list[str]] = {}
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"filename", "label"} <= set(reader.fieldnames):
            raise DataError(
                f"{call}: {csv_path}: expected a header 'filename,label', got {reader.fieldnames}"
            )
        for row in reader:
            groups.setdefault(row["label"], []).append(row["filename"])
    names = _stack_classes(call, csv_path, groups)
    n = len(groups[names[0]])
    out = np.empty((len(names), n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    with tqdm(
        total=len(names) * n, desc=f"Decoding {csv_path.name}", unit="img", disable=not progress
    ) as bar:
        for c, label in enumerate(names):
            for j, file_name in enumerate(sorted(groups[label])):
                path = image_dir / file_name
                try:
                    with Image.open(path) as im:
                        rgb = im.convert("RGB")
                    if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
                        rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
                    out[c, j] = np.asarray(rgb)
                except (OSError, ValueError, SyntaxError, EOFError) as err:
                    raise DataError(
                        f"{call}: cannot read image {path} listed in {csv_path} ({type(err).__name__}: {err})"
                    ) from err
            bar.update(n)
    return ClassImages(torch.from_numpy(out).permute(0, 1, 4, 2, 3).contiguous(), names)


def load_miniimagenet(
    root: str | os.PathLike[str] | None, split: str, *, progress: bool = True
) -> ClassImages:
    """Load one mini-ImageNet split as RGB uint8 ``[C, n, 3, 84, 84]`` (64/16/20 classes x 600).

    Looks in ``root`` (default ``resolve_data_root(None)``), then ``root/miniimagenet`` and
    ``root/mini-imagenet``, for ``mini-imagenet-cache-<split>.pkl`` (used first when present),
    else ``<split>.csv`` with an ``images/`` folder beside it. Classes are sorted by name
    (the wnid); the images of a class by file name (CSV) or index (pickle).

    Raises:
        ValueError: ``split`` is not one of "train", "val", "test".
        DataError: neither format is found (the message names the expected files), or a file is
            unreadable or inconsistent.
    """
    call = f"load_miniimagenet(split={split!r})"
    kind, path = _locate(call, root, split)
    if kind == "pickle":
        return _load_pickle(call, path)
    return _load_csv(call, path, path.parent / "images", progress)


def check_miniimagenet_source(root: str | os.PathLike[str] | None, splits=SPLITS) -> None:
    """Cheap check before any work: each split's files are where :func:`load_miniimagenet` looks.

    Only looks for the files (nothing is read). Raises ``DataError`` naming the expected files.
    """
    for split in splits:
        _locate(f"load_miniimagenet(split={split!r})", root, split)


def _locate(call: str, root, split: str) -> tuple[str, Path]:
    """``("pickle", path)`` or ``("csv", path)`` of ``split``; raises ``DataError`` if neither is found."""
    if split not in SPLITS:
        raise ValueError(f"{call}: expected split in {SPLITS}, got {split!r}")
    base = resolve_data_root(root)
    folders = [base / s if s else base for s in _SUBFOLDERS]
    for folder in folders:
        pkl = folder / f"mini-imagenet-cache-{split}.pkl"
        if pkl.is_file():
            return "pickle", pkl
        csv_path = folder / f"{split}.csv"
        if csv_path.is_file() and (folder / "images").is_dir():
            return "csv", csv_path
    looked = ", ".join(str(f) for f in folders)
    raise DataError(
        f"{call}: no mini-ImageNet data found (looked in {looked}). Expected either "
        f"mini-imagenet-cache-{split}.pkl (the learn2learn/torchmeta pickle), or {split}.csv "
        "(header 'filename,label', Ravi & Larochelle's split files) with an images/ folder of "
        "the JPEGs beside it. mini-ImageNet cannot be downloaded automatically; see docs/data.md."
    )
