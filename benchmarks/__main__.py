"""``python -m benchmarks [options]`` == ``jaxembed bench [options]``."""

import sys

from jaxembed._src.bench.main import main

sys.exit(main(sys.argv[1:]))
