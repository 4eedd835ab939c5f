"""Data for meta-learning: few-shot episodes, sinusoid regression, Omniglot and mini-ImageNet.

See ``docs/data.md`` for where the data go, the cache and the Omniglot split.
"""

from ._common import DataError, resolve_data_root
from .episodes import ClassImages, EpisodeBatch, EpisodeSampler
from .miniimagenet import load_miniimagenet
from .omniglot import OmniglotSplits, load_omniglot, omniglot_splits
from .sinusoid import SinusoidTasks

__all__ = [
    "EpisodeBatch",
    "ClassImages",
    "EpisodeSampler",
    "SinusoidTasks",
    "load_omniglot",
    "omniglot_splits",
    "OmniglotSplits",
    "resolve_data_root",
    "load_miniimagenet",
    "DataError",
]
