"""The one exception type the CLI turns into a one-line error message."""


class MoeplaceError(Exception):
    """A problem with the user's input: the message names it and, where there is one, the fix."""
