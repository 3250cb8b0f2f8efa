"""`python -m id3pm.cli` (and `accelerate launch -m id3pm.cli train ...`)."""

import sys

from id3pm.cli import main

sys.exit(main())
