"""Progress written to a log file stays a few lines, not one per redraw; counts and lists in summaries read as English."""

from __future__ import annotations

import time

from face_organizer import progress


def test_a_log_file_gets_a_line_a_minute_not_one_per_update(capsys) -> None:
    for _ in progress.bar(range(600), unit="img"):  # stderr is captured: not a terminal
        time.sleep(0.001)  # 0.6 s or more: a terminal bar would have redrawn 6 times or more
    written = capsys.readouterr().err
    lines = written.splitlines()
    assert 1 <= len(lines) <= 3 and "600/600" in lines[-1]
    # Lines of their own, as grep, less and docker logs read them: no redraw characters, no padding.
    assert "\r" not in written and written.endswith("\n") and all(line == line.rstrip() for line in lines)


def test_disabled_draws_nothing(capsys) -> None:
    for _ in progress.bar(range(10), enabled=False):
        pass
    assert capsys.readouterr().err == ""


def test_counts_and_lists_read_as_english() -> None:
    assert progress.count(1, "face") == "1 face" and progress.count(12_000, "face") == "12,000 faces"
    assert progress.listed(["A"], "folder") == "A"
    assert progress.listed(["A", "B"], "folder") == "A and B"
    assert progress.listed(["A", "B", "C"], "folder") == "A, B and C"
    names = [f"person_{i}" for i in range(8)]
    assert progress.listed(names, "folder", shown=6) == "person_0, person_1, person_2, person_3, person_4, person_5 and 2 more folders"
    assert progress.listed(names[:7], "folder", shown=6).endswith("person_5 and 1 more folder")


def test_sizes_read_in_the_unit_that_suits_them() -> None:
    assert [progress.size(n) for n in (0, 512, 815_000, 1_320_000, 2_410_000_000)] == [
        "0 B", "512 B", "815 kB", "1.32 MB", "2.41 GB"]


def test_work_without_progress_of_its_own_shows_how_long_it_has_run(monkeypatch, capsys) -> None:
    # FAISS's k-means says nothing while it runs (--clusters 1000 over 500,000 faces: minutes): a line
    # shows it is still at work, from a few seconds on; in a log file once a minute (here a second).
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 1.0)
    with progress.ticker("k-means (FAISS, 1,000 centres)", delay=0.5):
        time.sleep(2.8)
    lines = capsys.readouterr().err.splitlines()
    assert 2 <= len(lines) <= 4 and lines[-1] in ("k-means (FAISS, 1,000 centres): 00:02",
                                                  "k-means (FAISS, 1,000 centres): 00:03"), lines  # a busy machine
    assert all(line.startswith("k-means (FAISS, 1,000 centres): 00:0") for line in lines)
    with progress.ticker("quick", delay=0.5):  # most of them end before: nothing said
        time.sleep(0.1)
    with progress.ticker("quiet", delay=0.0, enabled=False):  # -q
        time.sleep(1.2)
    assert capsys.readouterr().err == ""


def test_log_lines_reach_the_stderr_of_the_moment_not_the_one_logging_was_set_up_with(capsys) -> None:
    # A stage run in-process sets up logging on the stderr of the moment; once that stream was swapped and closed
    # (a test's capture, a program that ran a stage and moved on), later lines ended in "Logging error".
    import io
    import logging
    import sys

    from face_organizer.cli import common

    first = io.StringIO()
    real, sys.stderr = sys.stderr, first
    try:
        common.setup_logging()
        logging.getLogger("face_organizer.test").warning("to the first")
        first.close()
        second = sys.stderr = io.StringIO()
        logging.getLogger("face_organizer.test").warning("to the second")
    finally:
        sys.stderr = real
    assert second.getvalue() == "WARNING: to the second\n"
    assert "Logging error" not in capsys.readouterr().err
