"""`python -m corral.cli`: the same as the `corral` entry point."""

import sys

from corral.cli import main

sys.exit(main())
