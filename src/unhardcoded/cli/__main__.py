"""``python -m unhardcoded.cli``: the `unhardcoded` program, for a tree that is not installed."""

import sys

from . import main

sys.exit(main())
