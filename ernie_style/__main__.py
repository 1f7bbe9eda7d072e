"""`python -m ernie_style` (and `accelerate launch -m ernie_style`) runs the CLI."""

import sys

from ernie_style.cli import main

sys.exit(main())
