"""``python -m rsir_train train ahcl ...``: the same command line as ``rsir train ...``."""

import sys

from .cli import main

sys.exit(main())
