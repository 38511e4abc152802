"""Keep freed tensor memory in the process, so that the next step reuses it.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc hands every block above
its mmap threshold (dynamic, at most 32 MiB) to the kernel on ``free`` and maps fresh
pages for the next request, and it trims the top of the heap back to the kernel once more
than its trim threshold lies free there. A model step allocates and frees the same large
activations over and over, so each one is page-faulted in again, one 4 KiB page at a
time: under a hypervisor a fault costs about a microsecond. Measured on a 2-core VM
(``bench/allocator.py``): the three element-wise passes of QuickGELU over a ``[64, 50,
3072]`` float32 activation took 34-45 ms, and 7-8 ms once both thresholds are raised;
ViT-B-32 image encoding ran faster in fp32 and in bf16 (README, "Benchmarks").

:func:`tune_allocator` raises both thresholds, so that freed blocks stay in the heap for
the next request. It is what PyTorch's own CPU launcher reaches for with jemalloc or
tcmalloc (``python -m torch.backends.xeon.run_cpu``), done in-process with glibc's
``mallopt``, so it needs no preloaded library. The price is that the process keeps the
memory of its peak for its lifetime, as CUDA's caching allocator does.

The ``clipforge`` command (and ``python -m clipforge.train`` / ``clipforge.embed``) calls
it at start-up; library users may call it themselves. ``CLIPFORGE_MALLOC=system`` keeps
the C library's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable

ENV = "CLIPFORGE_MALLOC"

# mallopt's parameter numbers (<malloc.h>); stable since glibc 2.0.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks below 1 GiB come from the heap. Larger ones (a whole-dataset tensor) still map
# their own pages: a fault each per page is noise beside what fills a gigabyte.
MMAP_THRESHOLD = 1 << 30
# Keep up to 2 GiB of free heap top instead of returning it after every step.
TRIM_THRESHOLD = (1 << 31) - 1

_state: dict[str, str] = {}


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None where the C library has none (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def tune_allocator() -> str:
    """Raise glibc's mmap and trim thresholds for this process (once; later calls return
    the first answer). Returns what was done: ``"tuned"``, ``"system"`` (``CLIPFORGE_MALLOC=
    system``) or ``"unavailable"`` (not glibc, e.g. macOS or musl)."""
    if "result" not in _state:
        _state["result"] = _tune()
    return _state["result"]


def _tune() -> str:
    if os.environ.get(ENV, "").lower() == "system":
        return "system"
    mallopt = _mallopt()
    # The trim threshold first: alone it changes little (the large blocks still get pages
    # of their own), so a C library that refuses the second does no harm.
    if (
        mallopt is not None
        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    ):
        return "tuned"
    return "unavailable"
