"""The table of settings: the one place every setting is named, checked and documented."""

from __future__ import annotations

import inspect

import pytest
from ferrojob import Executor, InvalidParameterError, Parallel, delayed, parallel_config
from ferrojob._settings import CONFIG, EXECUTOR, PARALLEL, SETTINGS, check, describe
from ferrojob.config import DEFAULT


def keywords(function):
    return {
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if name != "self" and parameter.kind is not inspect.Parameter.VAR_KEYWORD
    }


@pytest.mark.parametrize(
    ("scope", "function"),
    [(PARALLEL, Parallel.__init__), (CONFIG, parallel_config.__init__), (EXECUTOR, Executor.__init__)],
)
def test_every_keyword_is_in_the_table_and_every_setting_of_a_scope_is_a_keyword(scope, function):
    in_table = {name for name, setting in SETTINGS.items() if scope in setting.scopes}
    assert keywords(function) == in_table
    # A signature's default is the table's, or DEFAULT (the enclosing configuration decides).
    for name in in_table:
        default = inspect.signature(function).parameters[name].default
        assert default is DEFAULT or default == SETTINGS[name].default, name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("batch_size", 2**70),
        ("pre_dispatch", 10**30),
        ("max_batch_size", 2**64),
        ("max_tasks_per_worker", 2**64),
        ("max_worker_memory", 2**70),
        ("max_nbytes", "99999999999G"),
        ("timeout", 0),
        ("timeout", float("nan")),
        ("n_jobs", 10**30),
        ("verbose", "loud"),
    ],
)
def test_values_beyond_what_the_engine_takes_are_refused_clearly(name, value):
    with pytest.raises(InvalidParameterError) as raised:
        check(name, value)
    assert raised.value.code == "FJ201"
    assert name in str(raised.value)


def test_the_same_value_is_refused_alike_wherever_it_is_given():
    messages = set()
    for make in (lambda: Parallel(timeout=-1), lambda: Executor(timeout=-1)):
        with pytest.raises(InvalidParameterError) as raised:
            make()
        messages.add(str(raised.value))
    assert len(messages) == 1


def test_an_expression_of_n_jobs_too_large_means_every_batch():
    assert check("pre_dispatch", "1e300 * n_jobs") == "1e300 * n_jobs"
    assert Parallel(n_jobs=2, pre_dispatch="1e300 * n_jobs")(delayed(abs)(-i) for i in range(5)) == list(range(5))


def test_huge_batch_parameters_are_refused_before_they_reach_the_engine():
    with pytest.raises(InvalidParameterError, match="batch_size"):
        Parallel(n_jobs=2, batch_size=2**70)
    with pytest.raises(InvalidParameterError, match="pre_dispatch"):
        Parallel(n_jobs=2, pre_dispatch=10**30)


def test_the_table_describes_each_scope():
    rows = describe(PARALLEL)
    assert ("timeout", "all", "seconds one task may run") in rows
    assert ("max_tasks_per_worker", "processes", "a worker is replaced after this many tasks") in rows
    names = [name for name, _, _ in rows]
    assert "timeout" in names and "max_workers" not in names
    assert all(meaning for _, _, meaning in rows)
