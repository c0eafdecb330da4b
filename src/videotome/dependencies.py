"""The supported transformers range, read from the package's own metadata (pyproject.toml is its one source).

The adapters re-run transformers' layers through their internals (attribute names, attention scaling), which change
between minor releases, so :func:`videotome.patch` refuses a transformers outside the tested range rather than
merge with code it was never checked against.
"""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement

from .errors import VideotomeError

#: the dependency whose internals the adapters use
INTERNALS_OF = "transformers"


@functools.cache
def check_transformers() -> None:
    """Raise :class:`VideotomeError` when the installed transformers is outside the range videotome declares.

    Checked once per process; a source tree run without installing (no metadata) declares nothing and is not checked.
    """
    try:
        declared = requires("videotome")
    except PackageNotFoundError:
        return
    (supported,) = [r for r in map(Requirement, declared) if r.name == INTERNALS_OF and r.marker is None]
    installed = version(INTERNALS_OF)
    if not supported.specifier.contains(installed, prereleases=True):
        raise VideotomeError(
            f"{INTERNALS_OF} {installed} is installed but videotome supports {supported}; "
            "run: pip install -c constraints.txt -e ."
        )
