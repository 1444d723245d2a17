"""`python -m rsir_sdk.cli ...` runs the `rsir` command."""

import sys

from . import main

sys.exit(main())
