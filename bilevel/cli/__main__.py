"""``python -m bilevel.cli``: the same as ``python -m bilevel`` and the ``bilevel`` script."""

import sys

from . import main

sys.exit(main())
