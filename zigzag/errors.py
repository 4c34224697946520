"""The one exception type the CLI turns into a single line and exit code 2."""


class ZigzagError(Exception):
    """A problem with the user's input: the message names it and says what to do."""
