"""``python -m jaxembed.parity``: the same as ``jaxembed parity``.

See ``jaxembed._src.tools.parity``.
"""

import sys

from jaxembed._src.tools.parity import main

if __name__ == "__main__":
    sys.exit(main())
