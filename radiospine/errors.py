"""radiospine's errors: every error in the user's input or setup is a :class:`RadiospineError`.

The ``radiospine`` command prints a :class:`RadiospineError` as one line (``radiospine COMMAND: error: ...``,
exit code 2) and lets every other exception through with its traceback: a ``KeyError`` from a typo or a bare
``ValueError`` from a bug is a programming error, not something the user can fix. So each message here names
what is wrong (the file, line, study or key) and the fix.

The classes that were ``ValueError`` s (or ``FileNotFoundError`` s) before they had this base keep that second
base, so callers that catch ``ValueError`` (or ``FileNotFoundError``) keep working.
"""

from __future__ import annotations

from collections.abc import Sequence


class RadiospineError(Exception):
    """An error in the user's input or setup; the CLI prints it as one line naming the fix (exit code 2)."""


class UserError(RadiospineError):
    """An argument that cannot be used: a command-line option out of range (``--jobs 0``), an output folder that
    holds something else, a study id the data folder does not hold."""


class MissingInputError(RadiospineError, FileNotFoundError):
    """An input file or folder that does not exist: a data file, or an artifact of an earlier stage (the message
    names the command that writes it)."""


class DataError(RadiospineError, ValueError):
    """A data file or table whose content cannot be used (columns, cells, ids); the message names the file and
    line where it can."""


class ConfigError(RadiospineError, ValueError):
    """A config file or override that does not validate; the message names the file and the key."""


class CatalogError(RadiospineError, ValueError):
    """A data folder that does not follow the layout; the message names the file or folder and the fix."""


class DicomReadError(RadiospineError, ValueError):
    """A DICOM file or series folder that cannot be read. The message names the file, the problem and the fix."""


class RoiError(RadiospineError, ValueError):
    """An ROI that cannot be placed or cut; the message names the study, condition, level and the cause."""


class CheckpointError(RadiospineError, ValueError):
    """A checkpoint that cannot be used (sidecar missing or unreadable, weights not matching or unreadable)."""


class BundleError(RadiospineError, ValueError):
    """A model bundle that cannot be used: another format or radiospine version, a file missing or changed since
    ``radiospine export-model`` wrote it."""


class StoreError(RadiospineError, ValueError):
    """The feature folder is in a state a run cannot continue from; the message says what to do."""


class SubmissionError(RadiospineError, ValueError):
    """Predictions or a submission that cannot be used. ``problems`` lists every problem found, each naming
    the offending rows (the first few and how many)."""

    def __init__(self, problems: Sequence[str], source: str = "submission") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(f"{source}: " + "; ".join(self.problems))
