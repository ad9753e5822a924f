"""``python -m simplew``: the ``simplew`` command."""

import sys

from simplew.cli import main

sys.exit(main())
