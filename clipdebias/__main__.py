"""`python -m clipdebias` runs the command-line interface."""

import sys

from clipdebias.cli import main

if __name__ == "__main__":
    sys.exit(main())
