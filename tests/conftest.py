import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _quiet_torchopt():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="torchopt")
        yield
