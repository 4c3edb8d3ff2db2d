"""User-facing errors: one line that names the problem and the fix. The CLI prints them without a traceback."""


class UserError(Exception):
    """Bad input or environment; ``str(e)`` is a single line naming the problem and how to fix it."""

    exit_code = 2


class DependencyError(UserError):
    """A needed package or tool is missing; the message says what to install."""

    exit_code = 3
