"""One progress callback (advance by n of total, optionally in a named stage) and its bar."""

from weightdb.packing import Instance, solve
from weightdb.packing.synthetic import lineage
from weightdb.progress import progress_bar
from weightdb.zoo.progress import ProgressReporter


def _tasks(display) -> list[tuple[str, float, float | None]]:
    return [(task.description, task.completed, task.total) for task in display.tasks]


def test_the_bar_advances_its_own_task_and_one_per_stage() -> None:
    display, advance = progress_bar("importing m", "bytes")
    assert _tasks(display) == [("importing m", 0, None)]
    advance(10, 100)
    advance(5, 100)
    advance(1, 3, "clustering")
    advance(2, 3, "clustering")
    advance(1, 4, "validating")
    assert _tasks(display) == [
        ("importing m", 15, 100),
        ("clustering", 3, 3),
        ("validating", 1, 4),
    ]


def test_a_bar_without_description_shows_only_stages() -> None:
    display, advance = progress_bar(None)
    assert _tasks(display) == []
    advance(1, 2, "planning")
    assert _tasks(display) == [("planning", 1, 2)]


def test_the_dissolve_search_reports_every_type_it_tries_once() -> None:
    calls: list[tuple[int, int]] = []
    instance = lineage(models=6, distinct_blocks=400, seed=3)
    result = solve(instance, "dissolve", progress=lambda n, total: calls.append((n, total)))
    assert result.search_finished and calls
    assert all(n == 1 for n, _ in calls)
    totals = [total for _, total in calls]
    assert totals == sorted(totals)  # the total never shrinks (each type is tried once)
    assert len(calls) == totals[-1]  # at the end, every type to try was tried


def test_one_pass_packers_report_nothing() -> None:
    calls = []
    instance = Instance.from_models({"a": [1, 2], "b": [2, 3]}, 2)
    solve(instance, "greedy1", progress=lambda n, total: calls.append((n, total)))
    assert calls == []


def test_a_zoo_loop_is_a_stage_of_one_step_per_item() -> None:
    calls = []
    reporter = ProgressReporter(lambda n, total, stage="": calls.append((n, total, stage)))
    assert list(reporter.track(iter("abc"), 3, "train m")) == ["a", "b", "c"]
    assert calls == [(0, 3, "train m")] + [(1, 3, "train m")] * 3
