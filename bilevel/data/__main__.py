"""``python -m bilevel.data``: load (and cache) Omniglot; ``--write-split CSV`` writes the split listing."""

from .omniglot import main

raise SystemExit(main())
