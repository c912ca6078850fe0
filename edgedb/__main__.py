import sys

from edgedb.cli import main

sys.exit(main())
