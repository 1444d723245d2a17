"""``python -m export train ahcl ...``: see :mod:`export.cli`."""

import sys

from .cli import main

sys.exit(main())
