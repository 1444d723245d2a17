"""``python -m rsir_sdk.serve BUNDLE --uri ... --collection ...`` (the same as ``rsir serve``)."""

import sys

from .cli import main

sys.exit(main())
