import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: small nets, one thread per worker

import pytest
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

sys.path.insert(0, str(Path(__file__).parent))

from real_data import real_omniglot_archives  # noqa: E402


@pytest.fixture(scope="session")
def real_omniglot_cache(tmp_path_factory) -> Path:
    """A folder holding the real archives decoded to 28x28 (``omniglot_28x28.pt``), decoded once per
    test run: the xdist workers share it through a file lock (decoding takes about 8 s)."""
    root = real_omniglot_archives()
    if root is None:
        pytest.skip("real Omniglot archives not found (shared/data/omniglot or $BILEVEL_OMNIGLOT_DIR)")
    from filelock import FileLock

    from bilevel.data import load_omniglot

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this run
    folder = base / "omniglot-decoded"
    with FileLock(str(base / "omniglot-decoded.lock")):
        load_omniglot(root, download=False, progress=False, cache_dir=folder)
    return folder


@pytest.fixture(autouse=True)
def _quiet_torchopt():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="torchopt")
        yield
