"""``python -m jaxembed.parity``: the same as ``jaxembed parity`` (see ``jaxembed._src.parity``)."""

import sys

from jaxembed._src.parity import main

if __name__ == "__main__":
    sys.exit(main())
