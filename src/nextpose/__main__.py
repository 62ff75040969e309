"""``python -m nextpose`` (also what ``torchrun -m nextpose`` runs)."""

import sys

from .cli import main

sys.exit(main())
