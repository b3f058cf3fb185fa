"""The one exception type lensexp raises for bad input: entry points print it as a single line."""


class LensexpError(Exception):
    """A problem with the user's data or configuration; the message says what and what to do."""
