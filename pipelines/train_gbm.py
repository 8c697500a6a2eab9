"""`python pipelines/train_gbm.py ARGS` equals `radiospine train-gbm ARGS`.

Not installed: an entry point for people working in a clone; the runner is radiospine.stages.train_gbm.
"""

import sys

from radiospine.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-gbm", *sys.argv[1:]]))
