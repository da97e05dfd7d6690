"""``python -m benchmarks [options]`` == ``jaxembed bench [options]``."""

import sys

from jaxembed._src.tools.bench.main import main

sys.exit(main(sys.argv[1:]))
