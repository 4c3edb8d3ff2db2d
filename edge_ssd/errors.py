"""User-facing errors: one line that names the problem and the fix. The CLI prints them without a traceback.

Exit codes of the CLI (README, "Exit codes"): 0 success; 1 the command ran but its check failed (doctor FAIL,
watch --timeout without a message); 2 bad input or usage; 3 a missing dependency (the message says what to
install); 4 a conversion below its fidelity threshold (artefacts kept); 70 an unexpected internal error (one
line; -v shows the traceback); 130 interrupted (Ctrl-C)."""

INTERNAL_ERROR = 70


class UserError(Exception):
    """Bad input or environment; ``str(e)`` is a single line naming the problem and how to fix it."""

    exit_code = 2


class DependencyError(UserError):
    """A needed package or tool is missing; the message says what to install."""

    exit_code = 3
