"""The project's expected failures: bad input or a state the user must change, reported by the CLI as one line.

Every command-line entry point catches :class:`VideotomeError` (and ``ValueError`` and ``OSError``, which the
library raises for bad values and missing files) and prints ``videotome COMMAND: error: MESSAGE`` with exit code 2,
so a user never sees a traceback for a mistake of theirs. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class VideotomeError(Exception):
    """Base of the errors a user can fix: the message names the value and what was expected."""


#: what the command line reports as one line instead of a traceback
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (VideotomeError, ValueError, OSError)
