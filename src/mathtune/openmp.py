"""How idle OpenMP threads wait, chosen before torch loads (libgomp reads its settings once).

Measured on the 2-core development machine (SmolLM2-135M decoding, fast engine, 96 prompts):
- idle machine: a short spin (GOMP_SPINCOUNT=10000) 229.6 tok/s, libgomp's default 218.8,
  OMP_WAIT_POLICY=PASSIVE 200.2: between the many small ops of a decode step, sleeping threads
  wake up late;
- two such processes at once: PASSIVE 101 tok/s each, the short spin 59: spinning threads wait for
  peers that the other process has descheduled.
So the threads spin briefly when the CPUs are idle at start (under a quarter busy over 0.2 s of
/proc/stat; the load average lags a finished job by minutes), and sleep at once when they are busy.
A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT always wins.
"""

from __future__ import annotations

import os
import time


def busy_fraction(interval: float = 0.2) -> float | None:
    """Share of all CPUs' time spent busy over `interval` seconds (Linux), else None."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    span = total1 - total0
    return None if span <= 0 else 1.0 - (idle1 - idle0) / span


def configure_openmp() -> str:
    """Set the wait policy for this process (before torch is imported); returns what was chosen."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return "user"
    busy = busy_fraction()
    if busy is None:
        try:
            busy = os.getloadavg()[0] / (os.cpu_count() or 1)
        except OSError:
            busy = 0.0
    if busy < 0.25:
        os.environ["GOMP_SPINCOUNT"] = "10000"
        return "spin"
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "passive"
