"""Data-worker processes that never outlive the training process that started them.

A DataLoader worker whose parent is killed (``kill -9``, the out-of-memory killer) does
not notice: PyTorch's own check of the parent runs only while the worker waits for
work, and a worker that has results queued blocks at exit, joining the thread that
writes them into a pipe no one reads (its sibling workers keep the pipe's read end
open). Such workers stayed alive for hours, holding their memory. :func:`worker_init`,
the loader's ``worker_init_fn``, ties each worker to its parent twice:

* on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the worker the moment
  its parent goes. The signal fires when the parent *thread* that forked the worker
  exits, not the process; the DataLoader forks its workers from the thread that starts
  iterating, so the signal is only armed when that is the main thread (the trainer's
  loop), whose end is the process's end;
* everywhere, a watchdog thread that checks every :data:`WATCH_INTERVAL` seconds that the
  parent is still there and ends the worker when it is not.

Workers also ignore SIGINT. Ctrl-C in a terminal reaches the whole process group; a
worker that took it would stop serving in the middle of its queue and block at exit as
above, so the trainer's shutdown waited for PyTorch's join timeout (5 s per worker)
before terminating them. Left to the training process, the interrupt ends the workers
through the loader's ordinary shutdown, which takes a fraction of a second.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

WATCH_INTERVAL = 1.0  # seconds between the watchdog's looks at the parent
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def worker_init(parent: int, forked_by_main_thread: bool, worker_id: int) -> None:
    """``worker_init_fn`` of the loader (bound with ``functools.partial``): ``parent`` is
    the pid of the training process, ``forked_by_main_thread`` whether its main thread
    created the loader's workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    direct_child = os.getppid() == parent  # fork or spawn; not under a fork server
    if direct_child and forked_by_main_thread and sys.platform.startswith("linux"):
        _set_parent_death_signal(signal.SIGKILL)
    if sys.platform != "win32":  # PyTorch's own watchdog covers Windows
        threading.Thread(
            target=_watch, args=(parent, direct_child), name="parent-watchdog", daemon=True
        ).start()
    # The parent may have died before the signal was armed or the watchdog started.
    if not _parent_alive(parent, direct_child):
        os._exit(1)


def _set_parent_death_signal(sig: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    # A failure leaves the watchdog as the only guard, which is still correct.
    libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _parent_alive(parent: int, direct_child: bool) -> bool:
    if direct_child:
        # Reparented (to init or a subreaper) once the parent is gone; cheaper and free of
        # pid reuse, unlike probing the pid.
        return os.getppid() == parent
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user took the pid
        return False
    return True


def _watch(parent: int, direct_child: bool) -> None:
    while _parent_alive(parent, direct_child):
        time.sleep(WATCH_INTERVAL)
    # Nothing to flush or hand over: the results were for the process that died.
    os._exit(1)
