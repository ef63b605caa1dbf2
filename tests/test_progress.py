"""Progress written to a log file stays a few lines, not one per redraw."""

from __future__ import annotations

import time

from face_organizer import progress


def test_a_log_file_gets_a_line_a_minute_not_one_per_update(capsys) -> None:
    for _ in progress.bar(range(600), unit="img"):  # stderr is captured: not a terminal
        time.sleep(0.001)  # 0.6 s or more: a terminal bar would have redrawn 6 times or more
    written = capsys.readouterr().err
    lines = [line for line in written.replace("\r", "\n").splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3 and "600/600" in lines[-1]


def test_disabled_draws_nothing(capsys) -> None:
    for _ in progress.bar(range(10), enabled=False):
        pass
    assert capsys.readouterr().err == ""
