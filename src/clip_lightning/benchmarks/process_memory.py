"""This process's resident memory as Linux reports it, for the benchmarks' peak-memory figures.

Imports nothing heavy, so a fresh measuring process starts from its own baseline.
"""

from __future__ import annotations

from pathlib import Path


def rss_kib(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB: ``VmRSS`` (now) or ``VmHWM`` (the peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current resident set; OSError where the kernel does not offer it."""
    Path("/proc/self/clear_refs").write_text("5")
