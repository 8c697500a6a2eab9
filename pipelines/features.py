"""`python pipelines/features.py ARGS` equals `radiospine features ARGS`.

Not installed: an entry point for people working in a clone; the runner is radiospine.stages.features.
"""

import sys

from radiospine.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
