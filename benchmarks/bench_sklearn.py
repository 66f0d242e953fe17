"""scikit-learn GridSearchCV on joblib's default backend (loky) vs the ferrojob backend, n_jobs=2.

python benchmarks/bench_sklearn.py
"""

from __future__ import annotations

import os
import sys

from harness import measure, report, save_results


def main() -> None:
    import ferrojob  # noqa: F401  (registers the "ferrojob" joblib backend)
    import joblib
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import GridSearchCV

    X, y = make_classification(n_samples=2000, n_features=20, random_state=0)
    grid = {"n_estimators": [20, 50], "max_depth": [4, 8, None], "min_samples_leaf": [1, 5]}

    def search(backend: str) -> GridSearchCV:
        with joblib.parallel_config(backend=backend):
            return GridSearchCV(RandomForestClassifier(random_state=0), grid, cv=3, n_jobs=2).fit(X, y)

    assert search("ferrojob").best_params_ == search("loky").best_params_
    timings = {
        "ferrojob backend": measure(lambda: search("ferrojob"), 3),
        "joblib default (loky)": measure(lambda: search("loky"), 3),
    }
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    report(
        "GridSearchCV(RandomForestClassifier), 12 candidates x 3 folds, 2,000 samples, n_jobs=2",
        timings,
        baseline="ferrojob backend",
    )
    save_results()


if __name__ == "__main__":
    main()
