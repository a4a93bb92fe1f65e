"""User-facing errors: one line that names the problem and the fix."""


class ModtrainError(Exception):
    """An error caused by user input; the CLI prints it as one line and exits 2."""


def shown(value: object, limit: int = 80) -> str:
    """`repr(value)` for an error message, cut to `limit` characters with an ellipsis (a
    value from a config may be huge); large containers are not formatted whole."""
    if isinstance(value, (list, tuple, dict, set)) and len(value) > limit:
        return f"<{type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
