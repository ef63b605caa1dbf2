"""Stop signals: kill, docker/systemd stop and a closed terminal stop a command as Ctrl-C does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from face_organizer.cli import common
from face_organizer.multigpu import Worker, stop_workers


def _signal_self(signum: int, wait: float = 5.0) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(wait)  # the handler raises here; reaching the end means it did not


def test_sigterm_stops_with_a_message_and_exit_143(capsys) -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert common.run(lambda argv: _signal_self(signal.SIGTERM) or 0) == 143
    assert "Stopped by SIGTERM: progress so far is saved; re-run the same command to continue." in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # restored for whatever runs next


def test_cleanup_is_not_cut_short_by_a_second_sigterm(capsys) -> None:
    cleaned = []

    def main(argv) -> int:
        try:
            _signal_self(signal.SIGTERM)
        except common.Stopped:
            os.kill(os.getpid(), signal.SIGTERM)  # the launcher's SIGTERM after a Ctrl-C, say
            time.sleep(0.1)
            cleaned.append(True)  # a checkpoint being written
            raise
        return 0

    assert common.run(main) == 143 and cleaned == [True]


def test_ctrl_c_still_exits_130_and_a_second_ctrl_c_interrupts_the_cleanup(capsys) -> None:
    reached = []

    def main(argv) -> int:
        try:
            _signal_self(signal.SIGINT)
        except KeyboardInterrupt:
            reached.append("first")
            _signal_self(signal.SIGINT)
            reached.append("not reached")
        return 0

    assert common.run(main) == common.EXIT_INTERRUPTED and reached == ["first"]
    assert "Interrupted: progress so far is saved" in capsys.readouterr().err


def test_a_sigterm_right_after_ctrl_c_is_ignored_quietly() -> None:
    """Ctrl-C reaches the launcher and its workers at once, and the launcher's SIGTERM follows:
    a worker whose Python had not yet run its Ctrl-C handler printed a traceback ("Signal 15
    ignored due to race condition") into its log."""
    script = (
        "import os, signal, sys, time\n"
        "from face_organizer.cli import common\n"
        "def main(argv):\n"
        "    both = {signal.SIGINT, signal.SIGTERM}\n"
        "    signal.pthread_sigmask(signal.SIG_BLOCK, both)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    signal.pthread_sigmask(signal.SIG_UNBLOCK, both)  # both arrive before Python runs a handler\n"
        "    time.sleep(5)\n"
        "    return 0\n"
        "sys.exit(common.run(main))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == common.EXIT_INTERRUPTED, run.stderr
    assert run.stderr == "Interrupted: progress so far is saved; re-run the same command to continue.\n"


def test_sighup_ignored_by_nohup_stays_ignored(capsys) -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert common.run(lambda argv: _signal_self(signal.SIGHUP, wait=0.2) or 0) == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_launcher_stops_its_workers_in_order(tmp_path) -> None:
    """Each worker gets SIGTERM and time to save; one that ignores it is killed after the grace."""
    saving = (
        "import signal, sys, time, pathlib\n"
        "def stop(*_):\n"
        "    time.sleep(0.3)\n"
        f"    pathlib.Path({str(tmp_path / 'saved')!r}).write_text('yes')\n"
        "    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)\n"
    workers = []
    for gpu, code in enumerate((saving, stubborn)):
        w = Worker(gpu, 0, tmp_path / f"e{gpu}.pkl", tmp_path / f"e{gpu}.log", [sys.executable, "-c", code])
        w.process = subprocess.Popen(w.command, stdout=subprocess.PIPE, text=True)
        assert w.process.stdout.readline() == "ready\n"
        workers.append(w)
    started = time.monotonic()
    stop_workers(workers, grace=2.0)
    assert (tmp_path / "saved").read_text() == "yes"
    assert [w.code for w in workers] == [143, -signal.SIGKILL]
    assert 2.0 <= time.monotonic() - started < 30
    for w in workers:
        w.process.stdout.close()


CRASHING = """
import sys
from face_organizer.cli import common

def main(argv):
    parser = common.parser("crashing", "a command that fails unexpectedly", "")
    common.add_logging_args(parser)
    args = parser.parse_args(argv)
    common.setup_logging(args.verbose, args.quiet, args.log)
    print("working")
    raise RuntimeError("an unexpected failure")

sys.exit(common.run(main, sys.argv[1:]))
"""


def test_a_crash_of_a_logged_run_leaves_its_traceback_in_the_log(tmp_path) -> None:
    # Started with docker exec -d and --log, a run has no terminal: what ended it must be in the log.
    log = tmp_path / "run.log"
    done = subprocess.run([sys.executable, "-c", CRASHING, "--log", str(log)], capture_output=True, text=True,
                          cwd=str(Path(__file__).resolve().parents[1]))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"logging to {log}\nexit 1: the end of {log} says why\nTraceback")
    text = log.read_text()
    assert "\nworking\nTraceback (most recent call last):" in text and text.endswith("RuntimeError: an unexpected failure\n")
