"""Run reports: what a call did, read as data, text and pictures; advice that names each cause
of lost time built here on purpose, and not the others."""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
from ferrojob import Executor, InvalidParameterError, Parallel, RunReport, delayed, parallel_config
from ferrojob._advice import RULES, advise
from ferrojob._runlog import BatchRecord, CallRecorder
from ferrojob.cpus import cpu_count


def _sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def _rules_named(report: RunReport) -> set[str]:
    """Which rules speak for ``report`` (by function name)."""
    return {rule.__name__ for rule in RULES if rule(report) is not None}


def test_a_call_reports_its_tasks_batches_workers_and_bytes():
    parallel = Parallel(n_jobs=2, batch_size=5)
    assert parallel.last_report is None
    parallel(delayed(abs)(-i) for i in range(100))
    report = parallel.last_report
    assert isinstance(report, RunReport)
    assert (report.n_tasks, report.n_batches, report.batch_sizes) == (100, 20, [5] * 20)
    assert report.backend == "loky" and report.n_workers == 2
    assert len(report.batches) == 20 and all(record.outcome == "done" for record in report.batches)
    assert sorted(record.first_task for record in report.batches) == list(range(0, 100, 5))
    assert report.workers and all(name.startswith("pid ") for name in report.workers)
    assert sum(usage.n_batches for usage in report.workers.values()) == 20
    for usage in report.workers.values():
        assert usage.busy >= 0 and usage.idle >= 0 and usage.busy + usage.idle == pytest.approx(report.wall)
    assert report.bytes_to_workers > 0 and report.bytes_from_workers > 0
    assert report.pickle_seconds > 0 and report.unpickle_seconds > 0
    for record in report.batches:
        assert record.submitted <= record.started <= record.ended <= record.received + 1e-3
    assert report is parallel.last_report  # built once, when first asked for


def test_large_arrays_are_counted_as_shared_memory_and_copied_once_per_call():
    array = np.arange(1 << 20, dtype=np.float64)  # 8 MB
    parallel = Parallel(n_jobs=2, batch_size=1)
    results = parallel(delayed(np.multiply)(array, 2) for _ in range(6))
    assert all(np.array_equal(result, array * 2) for result in results)
    report = parallel.last_report
    assert report.bytes_shared_to_workers == 6 * array.nbytes
    assert report.bytes_copied_to_workers == array.nbytes
    assert report.bytes_resent_to_workers == 0
    assert report.bytes_shared_from_workers == 6 * array.nbytes
    assert "large_object_resent" not in _rules_named(report)


def test_a_failed_call_still_has_its_report():
    def fail(i):
        if i == 3:
            raise ValueError("task 3 fails")
        return i

    parallel = Parallel(n_jobs=2, batch_size=1)
    with pytest.raises(ValueError, match="task 3 fails"):
        parallel(delayed(fail)(i) for i in range(4))
    report = parallel.last_report
    assert report is not None and report.n_tasks >= 4
    assert "failed" in {record.outcome for record in report.batches}


def test_a_crash_is_an_event_and_a_batch_outcome():
    def crash(i):
        if i == 1:
            os._exit(3)
        return i

    parallel = Parallel(n_jobs=2, batch_size=1, return_exceptions=True)
    parallel(delayed(crash)(i) for i in range(3))
    report = parallel.last_report
    crashed = [event for event in report.events if event.what == "crashed"]
    assert crashed and "exited with code 3" in crashed[0].detail
    assert "crashed" in {record.outcome for record in report.batches}
    assert "<title>" in report_html(report) and "crashed" in report_html(report)


def report_html(report: RunReport) -> str:
    from ferrojob._report_render import html

    return html(report)


def test_threads_and_sequential_calls_report_too():
    parallel = Parallel(n_jobs=2, backend="threading", batch_size=2)
    parallel(delayed(abs)(-i) for i in range(10))
    report = parallel.last_report
    assert report.n_tasks == 10 and report.n_batches == 5
    assert all(name.startswith("ferrojob-thread-") for name in report.workers)
    sequential = Parallel(n_jobs=1)
    sequential(delayed(abs)(-i) for i in range(7))
    assert sequential.last_report.n_tasks == 7 and sequential.last_report.batches == []


def test_an_executor_reports_its_life_so_far_with_its_workers_starting():
    with Executor(max_workers=2) as executor:
        assert executor.submit(pow, 2, 5).result() == 32
        assert list(executor.map(abs, range(-20, 0))) == list(range(20, 0, -1))
        report = executor.report()
    assert report.n_tasks == 21
    assert sum(1 for event in report.events if event.what == "started") == 2
    assert report.workers


def test_save_writes_self_contained_html_an_svg_timeline_and_text(tmp_path):
    parallel = Parallel(n_jobs=2, batch_size=3)
    parallel(delayed(abs)(-i) for i in range(30))
    report = parallel.last_report
    report.save(tmp_path / "run.html")
    report.save(tmp_path / "run.svg")
    report.save(str(tmp_path / "run.txt"))
    page = (tmp_path / "run.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "Task durations" in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    timeline = ElementTree.parse(tmp_path / "run.svg").getroot()  # well-formed SVG
    assert timeline.tag.endswith("svg") and len(timeline.findall(".//{http://www.w3.org/2000/svg}rect")) >= 10
    assert (tmp_path / "run.txt").read_text() == str(report)
    assert str(report).startswith("ferrojob run report: 30 tasks in 10 batches on 2 workers")
    with pytest.raises(ValueError, match=r"\.html .*\.svg"):
        report.save(tmp_path / "run.png")


def test_parallel_config_report_writes_one_numbered_file_per_call(tmp_path):
    with parallel_config(report=tmp_path / "run.html"):
        Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(5))
        Parallel(n_jobs=2, backend="threading")(delayed(abs)(-i) for i in range(5))
    assert sorted(os.listdir(tmp_path)) == ["run-001.html", "run-002.html"]
    Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(5))  # outside the block: nothing written
    assert len(os.listdir(tmp_path)) == 2
    with pytest.raises(InvalidParameterError, match="report="):
        parallel_config(report="run.png")


def test_a_report_that_cannot_be_written_warns_and_the_call_keeps_its_results(tmp_path):
    with parallel_config(report=tmp_path / "missing" / "run.html"):
        with pytest.warns(RuntimeWarning, match="run-001.html"):
            assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(5)) == list(range(5))


# -- advice: each situation on purpose, named, and no other rule speaking --------------------


def test_advice_tasks_too_small():
    parallel = Parallel(n_jobs=2, batch_size=1)
    parallel(delayed(abs)(-i) for i in range(3000))
    report = parallel.last_report
    assert _rules_named(report) == {"tasks_too_small"}
    assert "tasks too small for the overhead: 3000 tasks" in report.advice[0]


def test_advice_straggler_names_the_task():
    parallel = Parallel(n_jobs=2, batch_size=1)
    parallel(delayed(_sleep_then)(1.5 if i == 7 else 0.05, i) for i in range(8))
    report = parallel.last_report
    assert _rules_named(report) == {"straggler"}
    assert "one straggler held the call: task 7 took" in report.advice[0]


def test_advice_workers_starved_by_a_slow_generator():
    def slow_inputs():
        for i in range(25):
            time.sleep(0.03)
            yield delayed(abs)(-i)

    parallel = Parallel(n_jobs=2)
    parallel(slow_inputs())
    report = parallel.last_report
    assert _rules_named(report) == {"slow_input"}
    assert "workers starved by the input" in report.advice[0]


def test_advice_results_too_large_to_pickle():
    parallel = Parallel(n_jobs=2, batch_size=1)
    parallel(delayed(list)(range(2_000_000)) for _ in range(6))
    report = parallel.last_report
    assert _rules_named(report) == {"results_too_large"}
    assert "Return numpy arrays" in report.advice[0]


def test_advice_oversubscription():
    cores = cpu_count()
    with parallel_config(backend="loky", inner_max_num_threads=cores):
        parallel = Parallel(n_jobs=2, batch_size=1)
        parallel(delayed(_sleep_then)(0.05, i) for i in range(4))
    report = parallel.last_report
    assert report.threads_per_worker == cores
    assert _rules_named(report) == {"oversubscribed"}
    assert f"{2 * cores} threads on {cores} cores" in report.advice[0]


def test_advice_large_object_resent_reads_the_records():
    # The data plane places each large object once per call, so this cannot be built with a
    # real call: the rule is checked on the records such a call would leave.
    recorder = CallRecorder("loky", 2)
    start = recorder.started
    for batch in range(4):
        resent = 0 if batch == 0 else 8 << 20
        recorder.batch_sizes.append(1)
        recorder.record(
            BatchRecord(
                batch, batch, 1, batch % 2, start, start + 0.01 * batch, start + 0.01 * batch + 0.5,
                start + 0.01 * batch + 0.5, 0.0, 0.5, 0.0, 0.0, 0.0, 100, 8 << 20, 8 << 20, resent, 10, 0,
            )
        )  # fmt: skip
    recorder.ended = start + 0.6
    report = RunReport.from_recorder(recorder)
    assert report.bytes_resent_to_workers == 3 * (8 << 20)
    assert _rules_named(report) == {"large_object_resent"}
    assert advise(report)[0].startswith("a large object was sent again: 25.2 MB")


def test_a_report_says_how_many_of_the_oldest_batches_it_left_out(monkeypatch):
    import ferrojob._runlog as runlog

    monkeypatch.setattr(runlog, "MAX_RECORDS", 20)
    recorder = CallRecorder("loky", 2)
    start = recorder.started
    for batch in range(25):
        recorder.record(
            BatchRecord(
                batch, batch, 1, 0, start, start, start + 0.001, start + 0.001,
                0.0, 0.001, 0.0, 0.0, 0.0, 10, 0, 0, 0, 10, 0,
            )
        )  # fmt: skip
    recorder.ended = start + 0.1
    report = RunReport.from_recorder(recorder)
    assert (len(report.batches), report.n_batches_dropped) == (19, 6)
    assert "the newest 19 batches: the oldest 6 are left out" in str(report)


def test_a_healthy_call_gets_no_advice():
    parallel = Parallel(n_jobs=2, batch_size=1)
    parallel(delayed(_sleep_then)(0.05, i) for i in range(12))
    assert parallel.last_report.advice == []


def test_joblibs_own_calls_on_the_ferrojob_backend_write_reports_too(tmp_path):
    joblib = pytest.importorskip("joblib")
    with parallel_config(report=tmp_path / "fit.txt"), joblib.parallel_config(backend="ferrojob", n_jobs=2):
        assert joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(10)) == list(range(10))
    assert os.listdir(tmp_path) == ["fit-001.txt"]
    summary = (tmp_path / "fit-001.txt").read_text()
    assert summary.startswith("ferrojob run report:") and "on 2 workers (ferrojob (under joblib))" in summary


def test_a_timeout_and_a_recycle_are_worker_events():
    parallel = Parallel(n_jobs=2, batch_size=1, timeout=0.5, return_exceptions=True)
    parallel(delayed(_sleep_then)(30.0 if i == 0 else 0.01, i) for i in range(3))
    report = parallel.last_report
    timeouts = [event for event in report.events if event.what == "timeout"]
    assert timeouts and "ran past" in timeouts[0].detail
    assert "timeout" in {record.outcome for record in report.batches}
    recycling = Parallel(n_jobs=2, max_tasks_per_worker=2)
    recycling(delayed(abs)(-i) for i in range(8))
    recycled = [event for event in recycling.last_report.events if event.what == "recycled"]
    assert len(recycled) >= 3 and all(event.detail == "max_tasks_per_worker reached" for event in recycled)


def test_scikit_learn_calls_write_reports_under_parallel_config(tmp_path):
    joblib = pytest.importorskip("joblib")
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    tree = pytest.importorskip("sklearn.tree")
    X, y = datasets.make_classification(n_samples=200, random_state=0)
    with parallel_config(report=tmp_path / "fit.html"), joblib.parallel_config(backend="ferrojob"):
        scores = model_selection.cross_val_score(tree.DecisionTreeClassifier(random_state=0), X, y, cv=4, n_jobs=2)
    assert len(scores) == 4
    assert os.listdir(tmp_path) == ["fit-001.html"]
    assert "ferrojob run report" in (tmp_path / "fit-001.html").read_text()
