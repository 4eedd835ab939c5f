import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: small nets, one thread per worker

import pytest
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _quiet_torchopt():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="torchopt")
        yield
