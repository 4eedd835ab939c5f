import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def real_omniglot_dir() -> Path | None:
    for c in [os.environ.get("BILEVEL_OMNIGLOT_DIR"), REPO.parent / "shared" / "data" / "omniglot"]:
        if c and (Path(c) / "images_background.zip").is_file() and (Path(c) / "images_evaluation.zip").is_file():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def omniglot_root(tmp_path_factory):
    """The real archives, with the 28x28 cache in a session tmp folder (decoded once, ~6 s)."""
    root = real_omniglot_dir()
    if root is None:
        pytest.skip("real Omniglot archives not found (shared/data/omniglot or $BILEVEL_OMNIGLOT_DIR)")
    cache = tmp_path_factory.mktemp("xdg-cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    from bilevel.data import load_omniglot

    load_omniglot(root, progress=False)
    yield root
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old
