"""`python pipelines/validate_submission.py ARGS` equals `radiospine validate-submission ARGS`.

Not installed: an entry point for people working in a clone; the runner is radiospine.stages.validate_submission.
"""

import sys

from radiospine.cli import main

if __name__ == "__main__":
    sys.exit(main(["validate-submission", *sys.argv[1:]]))
