"""The one exception type for user-facing errors."""

from __future__ import annotations


class ForgeError(Exception):
    """A problem with the user's input or environment, described in one line.

    The message names the file, tensor or value at fault in the library's own terms and, where possible, what to
    do next. The CLI prints it without a traceback and exits with status 2; where the value came from a command-line
    option, the CLI names the option (:meth:`from_option`).

    ``option``: where the bad value came from. A library function names its own parameter (``option="ctx"``, the
    message led by the value: ``"200000 tokens: too large ..."``) and leaves the command-line wording to the CLI's
    error boundary, which leads the message with the running command's option for that parameter (``--ctx 200000
    tokens: ...``) when it has one. A name starting with ``-`` is a command-line option the message already names.
    """

    def __init__(self, message: str, *, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option

    def from_option(self, option: str) -> "ForgeError":
        """The same error, its message led by the command-line option the bad value came from."""
        text = str(self)
        if (self.option is not None and self.option.startswith("-")) or text.startswith(option):
            return self
        # "Q4_K_X: unknown type" names its value -> "--quant Q4_K_X: ..."; "no type given" -> "--quant: no ..."
        return ForgeError(f"{option} {text}" if ": " in text else f"{option}: {text}", option=option)
