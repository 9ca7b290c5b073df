"""``python -m homerank`` is the ``homerank`` command line."""

import sys

from homerank.jobs.cli import main

sys.exit(main())
