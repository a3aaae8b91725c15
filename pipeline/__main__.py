"""``python -m pipeline`` is the ``kma`` command."""

import sys

from .cli import main

sys.exit(main())
