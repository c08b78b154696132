"""Host process settings for training on XLA:CPU.

`keep_freed_memory()` tells glibc's malloc to keep the memory a program frees rather than hand it back to the
kernel. XLA:CPU allocates a step's temporaries (about 1 GB at the bench_cpu_train shape, some of it in
single blocks of ~760 MB) afresh on every call, from its worker threads; by default glibc serves those from
per-thread arenas and mmap, and unmaps or trims them when they are freed, so every step touched its working
set as new pages: ~250,000 page faults and 0.4 s of kernel time per 2 s step. With one arena, no mmap for
large blocks, the largest trim threshold mallopt takes (2 GB) and as much padding kept at the top of the
heap, steps take no page faults once the heap has grown, bar a rare step whose heap top passes 2 GB (a
trim, then ~190,000 faults and ~1.5 s once). bench train, float32: 1.07-1.08 s/step against 1.14-1.22 s
with LLM_JAX_HOST_MALLOC=system (a third of the page faults over the run); bfloat16: one step in ~40 pays
the trim instead of one in ~8. The cost is that the process keeps its peak heap.

It must run before JAX starts its backend (the entry points call it first thing); it only applies to glibc
(Linux) and is skipped with LLM_JAX_HOST_MALLOC=system. TCMalloc or jemalloc through LD_PRELOAD do the same
job for a whole process and make this unnecessary.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to reuse freed memory (module docstring); True if it was applied."""
  if os.environ.get("LLM_JAX_HOST_MALLOC", "") == "system":
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
    return False
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2 ** 31 - 1), (_M_TOP_PAD, 2 ** 31 - 1))
  return all(mallopt(option, value) == 1 for option, value in settings)
