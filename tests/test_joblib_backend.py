"""ferrojob as a joblib backend: joblib's Parallel, and scikit-learn on top of it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

joblib = pytest.importorskip("joblib")
import ferrojob


def pid_and_mark(_=None):
    from ferrojob.backends.processes import in_worker

    return os.getpid(), in_worker()


def test_importing_ferrojob_does_not_import_joblib():
    program = "import sys, ferrojob; print('joblib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_backend_registered_after_a_later_joblib_import():
    program = (
        "import ferrojob, joblib, os\n"
        "with joblib.parallel_config(backend='ferrojob', n_jobs=2):\n"
        "    pids = joblib.Parallel()(joblib.delayed(os.getpid)() for _ in range(4))\n"
        "print(os.getpid() not in pids)\n"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_joblib_parallel_runs_in_ferrojob_workers():
    with joblib.parallel_config(backend="ferrojob", n_jobs=2):
        results = joblib.Parallel()(joblib.delayed(pid_and_mark)(i) for i in range(20))
    assert {mark for _, mark in results} == {True}
    assert os.getpid() not in {pid for pid, _ in results}


@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_return_as(return_as):
    out = joblib.Parallel(n_jobs=2, backend="ferrojob", return_as=return_as)(joblib.delayed(abs)(-i) for i in range(50))
    values = list(out)
    assert (sorted(values) if return_as == "generator_unordered" else values) == list(range(50))


def fail_on_three(x):
    if x == 3:
        raise KeyError(f"bad {x}")
    return x


def test_errors_keep_their_type_and_the_backend_recovers():
    with pytest.raises(KeyError, match="bad 3"):
        joblib.Parallel(n_jobs=2, backend="ferrojob")(joblib.delayed(fail_on_three)(i) for i in range(10))
    assert joblib.Parallel(n_jobs=2, backend="ferrojob")(joblib.delayed(abs)(i) for i in range(3)) == [0, 1, 2]


def test_worker_crash_surfaces():
    with pytest.raises(ferrojob.WorkerCrashedError):
        joblib.Parallel(n_jobs=2, backend="ferrojob")(joblib.delayed(os._exit)(3) for _ in range(2))


def blas_threads(_=None):
    return os.environ.get("OMP_NUM_THREADS"), os.environ.get("OPENBLAS_NUM_THREADS")


def test_inner_max_num_threads():
    with joblib.parallel_config(backend="ferrojob", n_jobs=2, inner_max_num_threads=1):
        assert set(joblib.Parallel()(joblib.delayed(blas_threads)() for _ in range(4))) == {("1", "1")}


def nested(_):
    inner = joblib.Parallel(n_jobs=2)(joblib.delayed(pid_and_mark)() for _ in range(3))
    return os.getpid(), {pid for pid, _ in inner}


def test_nested_calls_run_inside_the_worker():
    with joblib.parallel_config(backend="ferrojob", n_jobs=2):
        for outer_pid, inner_pids in joblib.Parallel()(joblib.delayed(nested)(i) for i in range(2)):
            assert inner_pids == {outer_pid}  # threads inside the worker, no new processes


def test_n_jobs_one_falls_back_to_sequential():
    assert (
        joblib.Parallel(n_jobs=1, backend="ferrojob")(joblib.delayed(os.getpid)() for _ in range(2))
        == [os.getpid()] * 2
    )


# -- scikit-learn -------------------------------------------------------------------------------

sklearn = pytest.importorskip("sklearn")
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score, cross_validate


class RecordingClassifier(ClassifierMixin, BaseEstimator):
    """Logistic regression that remembers which process fitted it."""

    def __init__(self, C=1.0, fail=False):
        self.C = C
        self.fail = fail

    def fit(self, X, y):
        if self.fail:
            raise ArithmeticError("this fit fails on purpose")
        self.model_ = LogisticRegression(C=self.C, max_iter=500).fit(X, y)
        self.classes_ = self.model_.classes_
        self.fit_pid_ = os.getpid()
        from ferrojob.backends.processes import in_worker

        self.fit_in_worker_ = in_worker()
        return self

    def predict(self, X):
        return self.model_.predict(X)


def test_grid_search_matches_a_sequential_run():
    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.01, 0.1, 1.0, 10.0]}
    sequential = GridSearchCV(RecordingClassifier(), grid, cv=3, n_jobs=1).fit(X, y)
    with joblib.parallel_config(backend="ferrojob"):
        parallel = GridSearchCV(RecordingClassifier(), grid, cv=3, n_jobs=2).fit(X, y)
    for key in ("mean_test_score", "std_test_score", "rank_test_score", "params"):
        assert list(parallel.cv_results_[key]) == list(sequential.cv_results_[key])
    assert parallel.best_params_ == sequential.best_params_


def test_cross_validation_runs_in_ferrojob_workers():
    X, y = load_iris(return_X_y=True)
    sequential = cross_val_score(RecordingClassifier(), X, y, cv=5, n_jobs=1)
    with joblib.parallel_config(backend="ferrojob"):
        scores = cross_val_score(RecordingClassifier(), X, y, cv=5, n_jobs=2)
        fitted = cross_validate(RecordingClassifier(), X, y, cv=5, n_jobs=2, return_estimator=True)
    assert list(scores) == list(sequential)
    estimators = fitted["estimator"]
    assert all(est.fit_in_worker_ for est in estimators)
    assert os.getpid() not in {est.fit_pid_ for est in estimators}


def test_an_error_inside_sklearn_keeps_its_type():
    X, y = load_iris(return_X_y=True)
    with joblib.parallel_config(backend="ferrojob"):
        with pytest.raises(ArithmeticError, match="fails on purpose"):
            cross_val_score(RecordingClassifier(fail=True), X, y, cv=3, n_jobs=2, error_score="raise")


def test_nested_joblib_in_a_ferrojob_worker_runs_in_threads_and_starts_no_process(script):
    done = script(
        """
        import os
        from ferrojob import Parallel, delayed

        def nested(i):
            import joblib
            pids = joblib.Parallel(n_jobs=2)(joblib.delayed(os.getpid)() for _ in range(4))
            explicit = joblib.Parallel(n_jobs=2, backend="loky")(joblib.delayed(os.getpid)() for _ in range(4))
            children = []
            for task in os.listdir(f"/proc/{os.getpid()}/task"):
                try:
                    with open(f"/proc/{os.getpid()}/task/{task}/children") as listing:
                        children += listing.read().split()
                except FileNotFoundError:
                    pass  # a thread (of the nested thread pool) that ended meanwhile
            return os.getpid(), set(pids) | set(explicit), children

        for worker, pids, children in Parallel(n_jobs=2)(delayed(nested)(i) for i in range(2)):
            assert pids == {worker}, (worker, pids)
            assert children == [], children
        print("threads only")
        """
    )
    assert done.returncode == 0, done.stderr
    assert "threads only" in done.stdout


def test_importing_the_backend_module_first_registers_it():
    program = (
        "import ferrojob.joblib_backend, joblib\n"
        "with joblib.parallel_config(backend='ferrojob', n_jobs=2):\n"
        "    print(joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(3)))\n"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[0, 1, 2]", out.stderr


ACTIVE_BACKEND_UNDER_THE_SWAP = """
import ferrojob as joblib_like
import joblib
from joblib.parallel import get_active_backend as imported_before

def active():
    backend, n_jobs = joblib.parallel.get_active_backend()
    return type(backend).__name__, n_jobs

print(active())
with joblib.parallel_config(backend="threading", n_jobs=3):
    print(active())
with joblib.parallel_config(n_jobs=3):
    print(active())
with joblib.parallel_config(prefer="threads"):
    print(active())
print(joblib.parallel_config is joblib_like.parallel_config)
"""


def test_get_active_backend_follows_parallel_config_under_the_import_swap():
    # What mne's parallel_func asks: the backend and n_jobs in force.
    done = subprocess.run(
        [sys.executable, "-c", ACTIVE_BACKEND_UNDER_THE_SWAP],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FERROJOB_AS_JOBLIB": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:5] == [
        "('LokyBackend', None)",
        "('ThreadingBackend', 3)",
        "('LokyBackend', 3)",
        "('ThreadingBackend', 1)",
        "True",
    ]


def nested_backend_name(_=None):
    from joblib.parallel import get_active_backend

    return type(get_active_backend()[0]).__name__


def test_a_subclass_of_joblibs_loky_backend_runs_its_tasks_under_its_nested_backend():
    from joblib._parallel_backends import LokyBackend

    class OldStyle(LokyBackend):
        """An older backend: get_nested_backend returns the backend alone."""

        def get_nested_backend(self):
            return super().get_nested_backend()[0]

    # configure() reads parallel._id (loky's executor is keyed by it), n_jobs, _backend_kwargs
    for backend in (LokyBackend(), OldStyle()):
        names = ferrojob.Parallel(n_jobs=2, backend=backend)(ferrojob.delayed(nested_backend_name)() for _ in range(4))
        assert names == ["ThreadingBackend"] * 4
