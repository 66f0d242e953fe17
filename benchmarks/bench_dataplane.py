"""The data plane at scale: each large object crosses once per call, and nothing stays behind.
ferrojob beside joblib (loky), n_jobs=2, in one run.

    python benchmarks/bench_dataplane.py               # all scenarios
    python benchmarks/bench_dataplane.py scaling       # some of them

scaling:   the same 13 MB dict in 2, 20, 200, 2,000 and 20,000 tiny tasks of one call: ferrojob
           places its pickle once per call, so the cost per call stays flat (plus the tasks'
           own); joblib (2 to 2,000 tasks: beyond, minutes) re-sends it with every batch.
unwatched: a 24 MB array whose memory no weak reference can watch (np.frombuffer over bytes; a
           result of an earlier ferrojob call) passed to 400 tasks, batch_size=1, beside the same
           call on a plain array: placed once per call like any array (ratio ~1).
freed:     100 calls of a `with Parallel()` block, each on a fresh 50 MB array the caller drops
           after the call: the parent's shared memory after each call (MB), at most.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from harness import measure, record, run_scenarios, verdict
from workloads import first_key_length, slice_sum

N_JOBS = 2


def scaling() -> None:
    import ferrojob
    import joblib

    table = {i: [i, str(i), float(i)] for i in range(100_000)}
    print("\nscaling: the same 13 MB dict in n tiny tasks of one call (ms per call)")
    print(f"  {'tasks':>7} {'ferrojob':>10} {'joblib (loky)':>14} {'ratio':>8}")
    per_call = {}
    for n_tasks in (2, 20, 200, 2_000, 20_000):
        ours = measure(
            lambda n=n_tasks: ferrojob.Parallel(n_jobs=N_JOBS)(
                ferrojob.delayed(first_key_length)(table, i) for i in range(n)
            ),
            3,
        )
        per_call[n_tasks] = ours
        theirs = None
        if n_tasks <= 2_000:
            theirs = measure(
                lambda n=n_tasks: joblib.Parallel(n_jobs=N_JOBS)(
                    joblib.delayed(first_key_length)(table, i) for i in range(n)
                ),
                1,
                warm_up=n_tasks == 2,
            )
            record(f"scaling: 13 MB dict in {n_tasks} tasks", {"ferrojob": ours, "joblib (loky)": theirs})
        ratio = f"{theirs / ours:7.1f}x" if theirs is not None else "       -"
        shown = f"{theirs * 1000:14.1f}" if theirs is not None else f"{'(not run)':>14}"
        print(f"  {n_tasks:>7} {ours * 1000:10.1f} {shown} {ratio}")
    # The tasks' own cost: the same calls on a small dict (nothing large to place).
    small = {0: [0, "0", 0.0]}
    own = measure(
        lambda: ferrojob.Parallel(n_jobs=N_JOBS)(ferrojob.delayed(first_key_length)(small, i) for i in range(20_000)),
        3,
    )
    extra = per_call[20_000] - own
    print(f"  20,000 tasks on a 1-entry dict: {own * 1000:.1f} ms; the 13 MB dict adds {extra * 1000:.1f} ms")
    print(f"  (200 tasks on the 13 MB dict: {per_call[200] * 1000:.1f} ms per call)")
    verdict(
        "scaling",
        "20,000 tasks cost <= 200 tasks' call + the tasks' own",
        (per_call[200] + own) / per_call[20_000],
        1.0,
    )


def unwatched() -> None:
    import ferrojob

    n_items = 3_000_000  # 24 MB
    plain = np.arange(n_items, dtype=np.float64)
    over_bytes = np.frombuffer(plain.tobytes(), dtype=np.float64)
    earlier_result = ferrojob.Parallel(n_jobs=N_JOBS)(ferrojob.delayed(np.copy)(plain) for _ in range(1))[0]

    def run(array):
        return ferrojob.Parallel(n_jobs=N_JOBS, batch_size=1)(
            ferrojob.delayed(slice_sum)(array, i, 400) for i in range(400)
        )

    assert run(over_bytes) == run(plain) == run(earlier_result)
    plain_time = measure(lambda: run(plain), 3)
    print("\nunwatched: a 24 MB array in 400 tasks (batch_size=1), by who owns its memory")
    print(f"  {'a plain array':<34} {plain_time * 1000:9.1f} ms")
    for name, array in (
        ("np.frombuffer over bytes", over_bytes),
        ("an earlier ferrojob call's result", earlier_result),
    ):
        seconds = measure(lambda a=array: run(a), 3)
        record(f"unwatched: {name}", {"ferrojob": seconds, "ferrojob, a plain array": plain_time})
        print(f"  {name:<34} {seconds * 1000:9.1f} ms   {seconds / plain_time:5.2f}x the plain array's time")
        verdict(
            "unwatched", f"{name}: placed once per call (<= 1.5x a plain array's time)", 1.5 * plain_time / seconds, 1.0
        )


def _shared_argument_megabytes() -> float:
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if "ferrojob-arguments" in target:
                total += os.fstat(int(fd)).st_size
        except OSError:
            continue
    return total / (1 << 20)


def freed() -> None:
    import ferrojob

    held = []
    with ferrojob.Parallel(n_jobs=N_JOBS) as parallel:
        for k in range(100):
            data = np.full(50_000_000 // 8, float(k))
            parallel(ferrojob.delayed(slice_sum)(data, i, 8) for i in range(8))
            del data
            held.append(_shared_argument_megabytes())
    print(
        "\nfreed: 100 calls of a block, a fresh 50 MB array each, dropped after its call\n"
        f"  parent's argument shared memory after a call: at most {max(held):.0f} MB, "
        f"{held[-1]:.0f} MB after the last (5,000 MB went through)"
    )
    verdict("freed", "at most one 50 MB array held", 150 / max(max(held), 1.0), 1.0)


SCENARIOS = {"scaling": scaling, "unwatched": unwatched, "freed": freed}


def main(names: list[str]) -> None:
    run_scenarios(SCENARIOS, names, f"numpy {np.__version__}, n_jobs={N_JOBS}")


if __name__ == "__main__":
    main(sys.argv[1:])
