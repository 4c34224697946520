"""The one exception type the CLI turns into a single line and exit code 2."""


class ZigzagError(Exception):
    """A problem with the user's input: the message names it and says what to do."""


class Interrupted(Exception):
    """Ctrl-C: the CLI prints ``zigzag: <message>`` and exits with code 130 (the message says what a rerun does)."""
