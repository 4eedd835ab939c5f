"""Lazy imports of optional libraries, with the command that installs them."""

from __future__ import annotations

import importlib


def require(module: str, package: str, backend: str):
    """Import ``module`` or raise ``ImportError`` naming ``pip install package``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{backend} needs the '{package}' library, which is not installed: "
                          f"run `pip install {package}` (or `pip install bilevel`).") from exc
