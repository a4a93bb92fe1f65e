"""User-facing errors: one line that names the problem and the fix."""


class ModtrainError(Exception):
    """An error caused by user input; the CLI prints it as one line and exits 2."""
