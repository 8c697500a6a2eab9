"""`python pipelines/grade.py ARGS` equals `radiospine grade ARGS`.

Not installed: an entry point for people working in a clone; the runner is radiospine.stages.grade.
"""

import sys

from radiospine.cli import main

if __name__ == "__main__":
    sys.exit(main(["grade", *sys.argv[1:]]))
