"""pytest plugin: make "ferrojob" joblib's default backend, to run a library's own tests (such as
scikit-learn's) on ferrojob's engine through joblib.

    PYTHONPATH=tests/joblib_suite python -m pytest -p joblib_default_ferrojob --pyargs sklearn.model_selection.tests
"""

from __future__ import annotations


def pytest_configure(config: object) -> None:
    import joblib
    from ferrojob.joblib_backend import FerrojobBackend

    joblib.register_parallel_backend("ferrojob", FerrojobBackend, make_default=True)
