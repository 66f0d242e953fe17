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


def fresh_array(i, n_items):
    """A new float64 array of ``n_items`` (written in full, like any computed result)."""
    import numpy as np

    return np.full(n_items, float(i))


def array_sum(a):
    return float(a.sum())


def slice_sum(a, i, n_slices):
    step = len(a) // n_slices
    return float(a[i * step : (i + 1) * step].sum())


_LEAKED = []


def leak(megabytes):
    """Keep ``megabytes`` of fresh memory for the life of the process: a task that leaks."""
    _LEAKED.append(bytearray(megabytes << 20))
    return len(_LEAKED)


def first_key_length(table, i):
    """A tiny task on a large object: what it costs to ship the object is all there is."""
    return len(table[i % len(table)])
