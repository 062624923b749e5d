"""Errors a person can act on.

`LipsyncError` carries a message that says what went wrong *and what to do*; the CLI prints it and exits 2,
the worker sends it as an `error` event. Anything else escaping the engine is a bug and keeps its traceback.
"""


class LipsyncError(Exception):
    """Bad input or environment: message is shown to the user as is. CLI exit code 2."""

    exit_code = 2


class Cancelled(Exception):
    """The user asked to stop; raised between batches so every stage can clean up."""
