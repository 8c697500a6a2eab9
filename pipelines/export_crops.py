"""`python pipelines/export_crops.py ARGS` equals `radiospine export-crops ARGS`.

Not installed: an entry point for people working in a clone; the runner is radiospine.stages.export_crops.
"""

import sys

from radiospine.cli import main

if __name__ == "__main__":
    sys.exit(main(["export-crops", *sys.argv[1:]]))
