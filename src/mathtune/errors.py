"""User-facing errors.

A `UserError` is bad input the user can fix (a missing file, a malformed line, an unknown key).
The CLI prints its message as one line and exits with code 2, no traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: printed as one line by the CLI, exit code 2."""

    exit_code = 2


class RunExistsError(UserError):
    """The output directory holds a finished run and --overwrite was not given."""


class SettingsMismatchError(UserError):
    """Two evaluation summaries were produced with different settings and cannot be compared."""
