"""The decorator of the compiled kernels (``service.assign``, ``service.serialize.tensor_kernel``).

``kernel`` is numba's ``njit`` without the GIL (``nogil``: other threads run while a kernel does)
and without fast-math (IEEE arithmetic, sums never reassociated), cached on disk where numba finds
a writable place: ``NUMBA_CACHE_DIR``, else ``__pycache__`` beside the source, else the user's
cache directory. Where none is writable the kernel is compiled in every process that uses it
(seconds, before the service turns ready) and a warning says how to avoid it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from numba import njit

log = logging.getLogger(__name__)


def kernel(fn: Callable[..., Any]) -> Any:
    """``fn`` compiled by numba (nopython, no GIL), cached on disk when possible."""
    try:
        return njit(cache=True, nogil=True)(fn)
    except RuntimeError as exc:  # numba found no writable cache location for this source
        log.warning(
            "numba cannot cache %s (%s): it is compiled in every process; set NUMBA_CACHE_DIR to a writable directory",
            fn.__qualname__,
            exc,
        )
        return njit(nogil=True)(fn)
