"""mini-ImageNet loaders, on tiny generated stand-ins of both formats."""

from __future__ import annotations

import csv
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from bilevel.data import DataError, EpisodeSampler, load_miniimagenet

WNIDS = ["n02", "n01", "n03"]  # deliberately unsorted
PER_CLASS = 4


def _image(c: int, j: int, size=(84, 84)) -> np.ndarray:
    rng = np.random.default_rng(100 * c + j)
    return rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def write_csv_layout(folder, split="train", sizes=None):
    """Ravi & Larochelle layout: <split>.csv + images/*.jpg (one image 100x90 to test resizing)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for c, wnid in enumerate(WNIDS):
        for j in reversed(range(sizes.get(wnid, PER_CLASS) if sizes else PER_CLASS)):  # CSV order unsorted
            name = f"{wnid}{j:08d}.jpg"
            size = (100, 90) if (c, j) == (0, 1) else (84, 84)
            Image.fromarray(_image(c, j, size)).save(folder / "images" / name, quality=95)
            rows.append((name, wnid))
    with open(folder / f"{split}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "label"])
        w.writerows(rows)


def write_pickle_layout(folder, split="train"):
    """learn2learn/torchmeta cache: {'image_data': uint8 [N,84,84,3], 'class_dict': {name: [idx]}}."""
    folder.mkdir(parents=True, exist_ok=True)
    data, class_dict = [], {}
    for c, wnid in enumerate(WNIDS):
        class_dict[wnid] = []
        for j in range(PER_CLASS):
            class_dict[wnid].append(len(data))
            data.append(_image(c, j))
    with open(folder / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
        pickle.dump({"image_data": np.stack(data), "class_dict": class_dict}, f)


def test_csv_layout(tmp_path):
    write_csv_layout(tmp_path, "val")
    data = load_miniimagenet(tmp_path, "val", progress=False)
    assert tuple(data.images.shape) == (3, PER_CLASS, 3, 84, 84) and data.images.dtype == torch.uint8
    assert data.names == sorted(WNIDS) and data.item_shape == (3, 84, 84)
    # n02 (class 0 in WNIDS) is names[1]; its drawing j=2 is stored at index 2 (sorted by file name).
    jpeg = np.asarray(Image.open(tmp_path / "images" / "n0200000002.jpg").convert("RGB"))
    assert torch.equal(data.images[1, 2], torch.from_numpy(jpeg.copy()).permute(2, 0, 1))
    batch = EpisodeSampler(data, ways=3, shots=1, queries=1, seed=0).sample(2)
    assert tuple(batch.support_x.shape) == (2, 3, 3, 84, 84)


def test_pickle_layout_exact_and_in_subfolder(tmp_path):
    write_pickle_layout(tmp_path / "miniimagenet", "test")
    data = load_miniimagenet(tmp_path, "test")
    assert tuple(data.images.shape) == (3, PER_CLASS, 3, 84, 84)
    assert data.names == sorted(WNIDS)
    assert torch.equal(data.images[2, 3], torch.from_numpy(_image(2, 3)).permute(2, 0, 1))  # n03


def test_pickle_is_preferred_when_both_exist(tmp_path):
    write_csv_layout(tmp_path)
    write_pickle_layout(tmp_path)
    data = load_miniimagenet(tmp_path, "train")
    assert torch.equal(data.images[0, 0], torch.from_numpy(_image(1, 0)).permute(2, 0, 1))  # n01, exact


def test_missing_data_names_the_expected_files(tmp_path):
    with pytest.raises(DataError, match=r"mini-imagenet-cache-train\.pkl.*train\.csv.*images/"):
        load_miniimagenet(tmp_path, "train")


def test_bad_split_and_inconsistent_files(tmp_path):
    with pytest.raises(ValueError, match=r"expected split in \('train', 'val', 'test'\), got 'validation'"):
        load_miniimagenet(tmp_path, "validation")
    write_csv_layout(tmp_path / "a", sizes={"n01": 3})
    with pytest.raises(DataError, match="different numbers of images"):
        load_miniimagenet(tmp_path / "a", "train", progress=False)
    write_csv_layout(tmp_path / "b")
    (tmp_path / "b" / "images" / "n0100000000.jpg").unlink()
    with pytest.raises(DataError, match=r"cannot read image .*n0100000000\.jpg"):
        load_miniimagenet(tmp_path / "b", "train", progress=False)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mini-imagenet-cache-val.pkl").write_bytes(b"\x80\x04 truncated")
    with pytest.raises(DataError, match=r"cannot read .*mini-imagenet-cache-val\.pkl"):
        load_miniimagenet(tmp_path / "c", "val")
