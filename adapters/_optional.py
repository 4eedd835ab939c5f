"""Lazy imports of optional libraries, with the command that installs them."""

from __future__ import annotations

import importlib


def require(module: str, extra: str, backend: str):
    """Import ``module`` or raise ``ImportError`` naming ``pip install bilevel[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{backend} needs the '{module}' library, which is not installed: "
                          f"run `pip install 'bilevel[{extra}]'` (or `pip install {module}`).") from exc
