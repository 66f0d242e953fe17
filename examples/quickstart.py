"""ferrojob in one screen: joblib's API, Rust engine, errors that explain themselves.

python examples/quickstart.py
"""

import math
import os

from ferrojob import Parallel, delayed


def slow_square(x):
    """A CPU-bound task defined in __main__: it still runs in worker processes."""
    total = 0.0
    for i in range(20_000):
        total += math.sin(i)
    return x * x, os.getpid()


def main():
    # 1. The usual joblib call: ordered results from worker processes.
    results = Parallel(n_jobs=2)(delayed(slow_square)(x) for x in range(10))
    print("squares:", [value for value, _ in results])
    print(f"ran in workers {sorted({pid for _, pid in results})}, not in this process ({os.getpid()})")

    # 2. Closures and lambdas work too (cloudpickle).
    factor = 3
    print("tripled:", Parallel(n_jobs=2)(delayed(lambda v: v * factor)(v) for v in range(5)))

    # 3. Results as they are ready.
    for value in Parallel(n_jobs=2, return_as="generator")(delayed(abs)(-v) for v in range(3)):
        print("generator gave", value)

    # 4. The misuse that started this project: forgetting delayed().
    try:
        Parallel(n_jobs=2)(slow_square(x) for x in range(3))
    except TypeError as error:
        print("\nForgetting delayed() gives:\n" + str(error))


if __name__ == "__main__":
    main()
