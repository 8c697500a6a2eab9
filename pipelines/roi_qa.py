"""`python pipelines/roi_qa.py ARGS` equals `radiospine roi-qa ARGS`.

Not installed: an entry point for people working in a clone; the runner is radiospine.stages.roi_qa.
"""

import sys

from radiospine.cli import main

if __name__ == "__main__":
    sys.exit(main(["roi-qa", *sys.argv[1:]]))
