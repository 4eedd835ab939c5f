"""Fixtures for the data tests: tiny generated Omniglot archives and the real data when present."""

from __future__ import annotations

import io
import os
import random
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from real_data import real_omniglot_archives

# A 5-character stand-in for Omniglot: 3 characters in images_background, 2 in images_evaluation.
# The alphabets are deliberately not in sorted order here, and "Zeta" sorts after "Alpha".
FAKE_LAYOUT = {
    "images_background": {"Zeta": 1, "Alpha": 2},
    "images_evaluation": {"Gamma": 2},
}
FAKE_CHARACTERS = 5


def fake_png(seed: int, size: tuple[int, int] = (105, 105), mode: str = "1") -> bytes:
    """A 1-bit PNG like Omniglot's: white background (1), a few black (0) strokes."""
    rng = np.random.default_rng(seed)
    img = np.ones(size[::-1], dtype=bool)
    for _ in range(4):
        r, c = rng.integers(5, min(size) - 25, size=2)
        h, w = rng.integers(3, 20, size=2)
        img[r : r + h, c : c + w] = False
    buf = io.BytesIO()
    Image.fromarray(img).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def write_archive(
    path: Path,
    archive: str,
    alphabets: dict[str, int],
    *,
    drawings: int = 20,
    seed: int = 0,
    first_id: int = 1,
    shuffle: bool = False,
    overrides: dict[str, bytes] | None = None,
) -> list[str]:
    """Write one archive in the official layout; return its PNG member names (sorted).

    ``overrides`` maps member names to replacement bytes (to plant a bad image).
    """
    entries: list[tuple[str, bytes | None]] = [(f"{archive}/", None)]
    char_id = first_id
    for alphabet, n_chars in alphabets.items():
        entries.append((f"{archive}/{alphabet}/", None))
        for c in range(1, n_chars + 1):
            folder = f"{archive}/{alphabet}/character{c:02d}/"
            entries.append((folder, None))
            for d in range(1, drawings + 1):
                name = f"{folder}{char_id:04d}_{d:02d}.png"
                entries.append((name, fake_png(seed * 1_000_000 + char_id * 100 + d)))
            char_id += 1
    if shuffle:
        random.Random(seed).shuffle(entries)
    overrides = overrides or {}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            if data is None:
                zf.writestr(name, b"")
            else:
                zf.writestr(name, overrides.get(name, data))
    return sorted(n for n, d in entries if d is not None)


@pytest.fixture
def fakes():
    """The generators above, for tests (fixtures, so test modules need not import conftest)."""
    return types.SimpleNamespace(
        png=fake_png, write_archive=write_archive, LAYOUT=FAKE_LAYOUT, CHARACTERS=FAKE_CHARACTERS
    )


@pytest.fixture
def make_fake_omniglot():
    """Factory: ``make_fake_omniglot(folder, **kw)`` writes both archives into ``folder``."""

    def make(folder: Path, layout=None, **kw) -> dict[str, Path]:
        layout = FAKE_LAYOUT if layout is None else layout
        folder.mkdir(parents=True, exist_ok=True)
        paths, first_id = {}, 1
        for archive, alphabets in layout.items():
            paths[archive] = folder / f"{archive}.zip"
            write_archive(paths[archive], archive, alphabets, first_id=first_id, **kw)
            first_id += sum(alphabets.values())
        return paths

    return make


@pytest.fixture(autouse=True)
def _isolated_user_cache(tmp_path, monkeypatch):
    """Keep every test away from the real ~/.cache and $BILEVEL_DATA."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("BILEVEL_DATA", raising=False)


REAL_OMNIGLOT_DIR = real_omniglot_archives()


@pytest.fixture(scope="session")
def real_omniglot_dir() -> Path:
    """Folder of the real archives; skips the test when they are absent."""
    if REAL_OMNIGLOT_DIR is None:
        pytest.skip("real Omniglot archives not found (shared/data/omniglot or $BILEVEL_OMNIGLOT_DIR)")
    return REAL_OMNIGLOT_DIR


@pytest.fixture(scope="session")
def real_omniglot_cache_dir(real_omniglot_cache) -> Path:
    return real_omniglot_cache


@pytest.fixture(scope="session")
def real_omniglot(real_omniglot_dir, real_omniglot_cache_dir):
    """The full Omniglot set, from the run's shared decoded cache (tests/conftest.py)."""
    from bilevel.data import load_omniglot

    return load_omniglot(real_omniglot_dir, download=False, progress=False, cache_dir=real_omniglot_cache_dir)
