"""`python pipelines/catalog.py ARGS` equals `radiospine catalog ARGS`.

Not installed: an entry point for people working in a clone; the runner is radiospine.stages.catalog.
"""

import sys

from radiospine.cli import main

if __name__ == "__main__":
    sys.exit(main(["catalog", *sys.argv[1:]]))
