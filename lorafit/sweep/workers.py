"""Worker processes of `lorafit sweep --jobs J`: each runs one trial (`lorafit sweep --worker K -o DIR`)
with cores // J torch threads, and tells the shared study (DIR/study.db) how it ended."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def start_worker(directory: Path, number: int, jobs: int) -> subprocess.Popen:
    """`lorafit sweep --worker K -o DIR` with this machine's cores shared out: cores // jobs threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = str(max(1, cores // jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    # A session of its own: Ctrl-C on the terminal reaches the sweep alone, which stops each worker once.
    return subprocess.Popen([sys.executable, "-m", "lorafit", "sweep", "--worker", str(number), "-o", str(directory)],
                            env=env, start_new_session=True)


def wait_for_a_worker(running: dict) -> tuple[int, int]:
    """(trial number, exit code) of the next worker to end; a worker stopped by a signal stops the sweep."""
    while True:
        for number, proc in list(running.items()):
            if proc.poll() is not None:
                del running[number]
                if proc.returncode == 130:
                    raise KeyboardInterrupt
                return number, proc.returncode
        time.sleep(0.2)


def stop_workers(running: dict) -> None:
    """SIGTERM each worker (it writes a checkpoint and exits 130) and wait for them."""
    for proc in running.values():
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in running.values():
        if proc is not None:
            proc.wait()
