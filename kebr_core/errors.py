"""User-facing errors.

Anything a user can cause (a bad file, a missing model, a wrong option) raises `KebrError` with one
sentence that names the file or value and the problem. The CLI prints that sentence and exits non-zero;
other exceptions are bugs and keep their traceback.
"""


class KebrError(Exception):
    """An error caused by the user's input, explained in one sentence."""
