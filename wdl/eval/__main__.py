"""`python -m wdl.eval ...` (see wdl/eval/cli.py). The guard matters: vLLM's engine starts worker processes
that import the main module again."""

import sys

from wdl.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
