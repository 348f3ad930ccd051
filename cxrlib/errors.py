"""User-facing errors: the message names the file or parameter and says how to fix it.

The CLI prints a UserError as one line (no traceback); notebooks show it the same way
(see experiments.notebook.setup). Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake the user can fix: bad input, missing file, wrong parameter, no GPU."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with the one line to print: where the work stopped and how to continue it."""
