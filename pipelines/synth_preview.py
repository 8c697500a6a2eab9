"""`python pipelines/synth_preview.py ARGS` equals `radiospine synth-preview ARGS`.

Not installed: an entry point for people working in a clone; the runner is radiospine.stages.synth_preview.
"""

import sys

from radiospine.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth-preview", *sys.argv[1:]]))
