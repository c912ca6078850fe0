"""``python -m edgedb.cli``, as ``python -m edgedb``."""

import sys

from edgedb.cli import main

sys.exit(main())
