"""glibc's allocator told to keep large freed blocks, so that CPU passes stop page-faulting their tensors.

A CPU forward pass allocates its activations afresh on every call. glibc serves a block above its mmap
threshold (which adapts, but never past 32 MiB) with a fresh `mmap` and unmaps it on free, so every
pass whose tensors exceed it faults their pages in again, zero-filled by the kernel. The bundled demo's
first convolution output (64 images x 32 channels x 64 x 64 float32) is 33.5 MiB: the model ran at
about 1,400 images/s like that, and 2,400 with the blocks kept (2-core VM). Perturbations of large
batches pay the same. Raising the mmap and trim thresholds keeps such blocks in the heap for the next
pass. Peak memory grows by about what is kept, and not with the dataset: the blocks kept are the ones
the next pass allocates again (the demo run: 15.2 -> 13.0 s, peak 1.26 -> 1.32 GB).

The usual advice for PyTorch on CPU is another allocator (jemalloc, tcmalloc) preloaded; this is the
part of it that needs nothing installed. Nothing changes where the C library is not glibc, or where the
user set glibc's own variables (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`): theirs win.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

MMAP_THRESHOLD = 256 << 20
"""Blocks up to this size come from the heap (reused) rather than from their own mapping."""
TRIM_THRESHOLD = 512 << 20
"""Free memory at the top of the heap is returned to the system only beyond this."""

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3


@functools.lru_cache(maxsize=1)
def keep_large_blocks() -> bool:
    """Set the thresholds once per process (visionstress runs call it); True when they were set."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
