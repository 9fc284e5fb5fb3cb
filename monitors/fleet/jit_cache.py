"""numba's compiled code kept on disk for libraries that do not ask for it (umap-learn, pynndescent).

umap-learn declares most of its numba functions without ``cache=True``, so every new process compiled them
again before its first projection: ~18 s of a monitor's first UMAP projection after each start (one core),
~0.2 s once the machine code is read back from numba's cache. :func:`keep_compiled` turns the cache on for
every numba function the named packages define at module level, before anything calls them. numba keeps the
cache beside the package's sources (``__pycache__``) or under ``NUMBA_CACHE_DIR``; where neither is writable a
function compiles as before. numba checks each entry against its source file and its own version.
"""

from __future__ import annotations

import contextlib
import functools
import sys


@functools.cache
def keep_compiled(packages: tuple[str, ...]) -> int:
    """Turn on numba's on-disk cache for the module-level numba functions of ``packages`` (imported already);
    once per process. Returns how many functions it was turned on for."""
    from numba.core.dispatcher import Dispatcher  # numba comes with umap-learn; imported only where it is used

    count = 0
    for name, module in list(sys.modules.items()):
        if module is None or name.partition(".")[0] not in packages:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, Dispatcher):
                with contextlib.suppress(RuntimeError):  # no writable cache folder for this file
                    value.enable_caching()
                    count += 1
    return count
