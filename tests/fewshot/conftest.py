import os

import pytest
from real_data import real_omniglot_archives


@pytest.fixture(scope="session")
def omniglot_root(tmp_path_factory, real_omniglot_cache):
    """A data root with the real archives and their decoded cache (links, so nothing is decoded
    again), and $XDG_CACHE_HOME in a session tmp folder so that nothing is written to the user's."""
    root = tmp_path_factory.mktemp("omniglot-root")
    archives = real_omniglot_archives()
    for name in ("images_background.zip", "images_evaluation.zip"):
        (root / name).symlink_to(archives / name)
    (root / "omniglot_28x28.pt").symlink_to(real_omniglot_cache / "omniglot_28x28.pt")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield root
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old
