"""``python -m gshead`` runs the gshead command."""

import sys

from gshead.cli import main

sys.exit(main())
