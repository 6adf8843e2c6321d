"""`kernel`: numba's `njit` with the compiled code cached on disk.

Compiling the CPU kernels takes seconds per process (about 5 s for the default suite), paid by every
run, every pytest worker and every `visionstress show`. With `cache=True` numba stores the machine code
beside the module (or in the user's cache folder, or in `NUMBA_CACHE_DIR`) and later processes load it.
A cached kernel must be a module-level function without closure variables (numba keys its cache on
them). Globals it reads are frozen into the cached code, and numba invalidates a cache only when the
kernel's own file changes: so the kernel modules hold their constants, or import ones that never change.

Imported only where numba is available.
"""

from __future__ import annotations

from typing import Any, Callable

from numba import njit


def kernel(**options: Any) -> Callable[[Callable], Callable]:
    """`njit(cache=True, **options)`; without a cache where numba finds no writable folder for it (a
    read-only install with no user cache), rather than failing the import."""

    def compile_lazily(function: Callable) -> Callable:
        try:
            return njit(cache=True, **options)(function)
        except RuntimeError:  # numba: "cannot cache function ...: no locator available"
            return njit(**options)(function)

    return compile_lazily
