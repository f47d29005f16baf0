"""The process' resident memory on Linux: what the CPU memory figures of `hrm-doctor memory` and bench/ read.

The peak is VmHWM, which /proc/self/clear_refs can reset to the current RSS (Linux >= 4.0), so one step's
peak can be told apart from everything before it; ru_maxrss (never reset) where /proc is missing.
"""

from __future__ import annotations

import os
import resource


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the peak to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> tuple[int, str]:
    """(bytes, what was read): VmHWM, else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "peak RSS (VmHWM)"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS (ru_maxrss)"
