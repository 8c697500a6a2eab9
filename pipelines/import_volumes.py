"""`python pipelines/import_volumes.py ARGS` equals `radiospine import-volumes ARGS`.

Not installed: an entry point for people working in a clone; the runner is radiospine.stages.import_volumes.
"""

import sys

from radiospine.cli import main

if __name__ == "__main__":
    sys.exit(main(["import-volumes", *sys.argv[1:]]))
