"""``python -m collector`` is ``recp``."""

import sys

from .cli import main

sys.exit(main())
