"""`python -m wdl ...` is the `wdl` command."""

import sys

from wdl.cli import main

if __name__ == "__main__":
    sys.exit(main())
