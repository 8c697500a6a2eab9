"""`python pipelines/report.py ARGS` equals `radiospine report ARGS`.

Not installed: an entry point for people working in a clone; the runner is radiospine.stages.report.
"""

import sys

from radiospine.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
