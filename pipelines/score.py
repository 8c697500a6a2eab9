"""`python pipelines/score.py ARGS` equals `radiospine score ARGS`.

Not installed: an entry point for people working in a clone; the runner is radiospine.stages.score.
"""

import sys

from radiospine.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
