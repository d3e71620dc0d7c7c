"""The one exception type for user-facing errors."""


class ForgeError(Exception):
    """A problem with the user's input or environment, described in one line.

    The message names the file, tensor or option at fault and, where possible, what to do
    next. The CLI prints it without a traceback and exits with status 2.
    """
