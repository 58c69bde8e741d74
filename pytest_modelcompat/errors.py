"""The project's one exception type for bad user input."""


class CompatInputError(ValueError):
    """Bad user input: a path, a suite file, a data row, an option value.

    ``str(error)`` is a single line that names the problem and how to fix it; entry points show
    exactly that line (``muscle`` exits 2, the plugin raises a usage/collection error) and never a
    traceback.
    """
