"""``python -m jaxembed <command>``: the same as the ``jaxembed`` console command."""

import sys

from jaxembed._src.tools.cli import main

sys.exit(main())
