"""`python pipelines/predict.py ARGS` equals `radiospine predict ARGS`.

Not installed: an entry point for people working in a clone; the runner is radiospine.stages.predict.
"""

import sys

from radiospine.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
