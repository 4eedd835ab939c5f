"""Where the real Omniglot archives are, for the tests that use them (skipped when absent)."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def real_omniglot_archives() -> Path | None:
    """The folder of the real Omniglot archives ($BILEVEL_OMNIGLOT_DIR, else shared/data/omniglot
    beside the checkout), or ``None`` when absent."""
    for c in [os.environ.get("BILEVEL_OMNIGLOT_DIR"), REPO.parent / "shared" / "data" / "omniglot"]:
        if c and (Path(c) / "images_background.zip").is_file() and (Path(c) / "images_evaluation.zip").is_file():
            return Path(c)
    return None
