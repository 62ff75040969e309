"""``python -m nextpose`` (and ``torchrun -m nextpose``) runs the command line."""

import sys

from .cli import main

sys.exit(main())
