"""`python pipelines/localize.py ARGS` equals `radiospine localize ARGS`.

Not installed: an entry point for people working in a clone; the runner is radiospine.stages.localize.
"""

import sys

from radiospine.cli import main

if __name__ == "__main__":
    sys.exit(main(["localize", *sys.argv[1:]]))
