"""`python pipelines/train_localizer.py ARGS` equals `radiospine train-localizer ARGS`.

Not installed: an entry point for people working in a clone; the runner is radiospine.stages.train_localizer.
"""

import sys

from radiospine.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-localizer", *sys.argv[1:]]))
