"""``python -m byol_embed ...`` is ``byol ...`` (for environments where the console script is not on PATH)."""

import sys

from clients.cli import main

if __name__ == "__main__":
    sys.exit(main())
