"""Data for meta-learning: few-shot episodes, sinusoid regression, Omniglot and mini-ImageNet.

See ``docs/data.md`` for where the data go, the cache and the Omniglot split.
"""

from .common import DataError, resolve_data_root
from .episodes import ClassImages, EpisodeBatch, EpisodeSampler
from .miniimagenet import check_miniimagenet_source, load_miniimagenet
from .omniglot import OmniglotSplits, check_omniglot_source, load_omniglot, omniglot_splits
from .sinusoid import SinusoidTasks

__all__ = [
    "EpisodeBatch",
    "ClassImages",
    "EpisodeSampler",
    "SinusoidTasks",
    "load_omniglot",
    "check_omniglot_source",
    "omniglot_splits",
    "OmniglotSplits",
    "resolve_data_root",
    "load_miniimagenet",
    "check_miniimagenet_source",
    "DataError",
]
