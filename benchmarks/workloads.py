"""Task functions shared by the benchmarks (importable, so every library sends them by reference)."""

import time


def double(x):
    return x * 2


def busy(milliseconds):
    """Spin (no sleeping) for ``milliseconds`` of wall time: CPU-bound work of a known length."""
    end = time.perf_counter() + milliseconds / 1000
    while time.perf_counter() < end:
        pass
    return milliseconds
