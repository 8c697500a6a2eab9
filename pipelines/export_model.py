"""`python pipelines/export_model.py ARGS` equals `radiospine export-model ARGS`.

Not installed: an entry point for people working in a clone; the runner is radiospine.stages.export_model.
"""

import sys

from radiospine.cli import main

if __name__ == "__main__":
    sys.exit(main(["export-model", *sys.argv[1:]]))
