"""``python -m controld``."""

import sys

from controld.cli import main

sys.exit(main())
