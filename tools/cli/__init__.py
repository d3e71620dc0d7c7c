"""The ``quantize`` command line (click).

- :mod:`.main`: the ``quantize`` group, the one error boundary (``ForgeError`` -> one line and exit 2, Ctrl-C and
  SIGTERM -> exit 130) and the explicit table of every command, whose module is imported only when the command
  runs (or ``quantize --help`` lists them all).
- :mod:`.options`: option decorators shared by the commands (``--json``, ``--threads``, ``--ctx``, ``--template``...).
- One module per group of commands: :mod:`.convert` (convert, merge, inspect), :mod:`.quant` (quant, imatrix,
  eval), :mod:`.chat` (chat, smoke), :mod:`.modelfile`, :mod:`.publish`, :mod:`.pipeline` (merge-convert, demo).

Adding a command: write its function in one of those modules (or a new one) and add ``"name": "module:function"``
to ``COMMANDS`` in :mod:`.main`.
"""

from .main import main

__all__ = ["main"]
