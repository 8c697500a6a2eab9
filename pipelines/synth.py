"""`python pipelines/synth.py ARGS` equals `radiospine synth ARGS`.

Not installed: an entry point for people working in a clone; the runner is radiospine.stages.synth.
"""

import sys

from radiospine.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
