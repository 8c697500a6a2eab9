"""`python pipelines/demo_summary.py ARGS` equals `radiospine demo-summary ARGS`.

Not installed: an entry point for people working in a clone; the runner is radiospine.stages.demo_summary.
"""

import sys

from radiospine.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo-summary", *sys.argv[1:]]))
