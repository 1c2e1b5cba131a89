"""``python -m batchmix``: the same as the ``batchmix`` command."""

import sys

from batchmix.cli import main

sys.exit(main())
