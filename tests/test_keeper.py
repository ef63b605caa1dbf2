"""The container's first process: docker stop gives every docker exec run SIGTERM and time to save."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from face_organizer import embfile, keeper
from face_organizer.embfile import parts_dir

from conftest import ROOT, child_processes, copies_of


def test_the_processes_of_the_container_are_those_proc_shows_but_itself_and_zombies(tmp_path) -> None:
    proc = tmp_path / "proc"
    for pid, stat in ((1, "1 (python3) S 0"), (7, "7 (generate_embeddings.py) R 0"), (8, "8 (sleep) Z 1"),
                      (9, "9 (a) Z (b)) S 0"), (os.getpid(), f"{os.getpid()} (pytest) R 1")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "stat").write_text(stat)
    (proc / "self").mkdir()
    (proc / "12").mkdir()  # gone while being read: no stat
    assert keeper.others(str(proc)) == [1, 7, 9]  # 8 has ended (a zombie); 9's name only looks like one
    assert keeper.others(str(tmp_path / "missing")) == []


def test_a_stop_lets_a_run_save_and_ends_a_shell_that_ignores_sigterm(tmp_path, video_crops, testpack_dir) -> None:
    folder = copies_of(video_crops, tmp_path / "in", 8)  # enough images that the run is going when the stop comes
    output, status = tmp_path / "emb.pkl", tmp_path / "status.json"
    run = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "generate_embeddings.py"), "--input", str(folder),
                            "--output", str(output), "--model", str(testpack_dir), "--batch-size", "4",
                            "--checkpoint-seconds", "600", "--status-file", str(status)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # A docker exec -it shell: it ignores SIGTERM, so only the SIGHUP that follows ends it. Its SIGHUP is the
    # default one, as in a container, also where the suite runs under nohup (which would hand it an ignored one).
    shell = subprocess.Popen([sys.executable, "-c", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                              "signal.signal(signal.SIGHUP, signal.SIG_DFL)\nprint('up', flush=True)\ntime.sleep(120)"],
                             stdout=subprocess.PIPE, text=True)
    children = (run, shell)
    try:
        assert shell.stdout.readline().strip() == "up"
        deadline = time.monotonic() + 120
        while not (status.exists() and json.loads(status.read_text())["done"] > 0):
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before the stop"
            time.sleep(0.05)
        lines: list[str] = []
        left = keeper.stop_all(lambda: [c.pid for c in children if keeper._running(c.pid)], 60, log=lines.append,
                               reaper=lambda: None)
        assert left == [] and lines[-1].startswith("all stopped in ")
        assert f"stopping 2 process(es) so that runs save their progress: {run.pid} (python " in lines[0]
        assert run.wait() == 128 + signal.SIGTERM and shell.wait() == -signal.SIGHUP
        assert "Stopped by SIGTERM: progress so far is saved" in run.stderr.read()
    finally:
        for child in children:
            child.kill()
            child.wait()
    # What it had embedded is in its checkpoint (the first: none was due for ten minutes), not lost.
    saved = embfile.load(embfile.checkpoint_parts(output)[0])
    assert not output.exists() and len(embfile.checkpoint_parts(output)) == 1 and len(saved.rows) > 0
    assert parts_dir(output).is_dir()


def test_a_process_that_outlives_the_stop_is_named_and_left_to_dockers_kill(tmp_path) -> None:
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time\nfor s in (signal.SIGTERM, signal.SIGHUP):\n"
                                 "    signal.signal(s, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(60)"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert stubborn.stdout.readline().strip() == "up"
        lines: list[str] = []
        left = keeper.stop_all(lambda: [stubborn.pid] if keeper._running(stubborn.pid) else [], 0.3,
                               log=lines.append, reaper=lambda: None, poll=0.05)
        assert left == [stubborn.pid] and stubborn.poll() is None
        assert lines[-1].startswith(f"1 still running after 0.3 s, left to be killed: {stubborn.pid} (python -c ")
    finally:
        stubborn.kill()
        stubborn.wait()
    assert keeper.stop_all(lambda: [], 10, log=lines.append) == []  # nothing to stop: at once, nothing said


def test_it_runs_only_as_the_first_process_of_a_container(tmp_path, capsys, monkeypatch) -> None:
    # Anywhere else, a stop would signal every process of the machine.
    assert keeper.main([]) == 2
    assert f"not pid {os.getpid()}: it would signal every process of this machine" in capsys.readouterr().err
    # Started by docker run --init's init (pid 1), which passes docker's SIGTERM on to it alone: it runs.
    (tmp_path / "1").mkdir()
    monkeypatch.setattr(keeper.os, "getppid", lambda: 1)
    for init, first in ((None, False), ("docker-init\n", True), ("tini\n", True), ("bash\n", False)):
        if init is not None:
            (tmp_path / "1" / "comm").write_text(init)
        assert keeper.first_process(str(tmp_path)) is first, init
    for value, seconds in (("", 100.0), ("30", 30.0), ("-5", 0.0), ("soon", 100.0)):
        monkeypatch.setenv(keeper.STOP_SECONDS_ENV, value)
        assert keeper.stop_seconds() == seconds


REAP = """
import os, time
from face_organizer import keeper
children = [pid for pid in (os.fork() for _ in range(3)) if pid or os._exit(0)]
time.sleep(0.3)
print(sum(keeper._running(p) or os.path.exists(f"/proc/{p}") for p in children), end=" ")
keeper.reap()
print(sum(os.path.exists(f"/proc/{p}") for p in children), end=" ")
keeper.reap()  # none left: returns at once
print("done")
"""


def test_ended_children_are_reaped_not_left_as_zombies() -> None:
    # Processes whose parent died are handed to pid 1; sleep infinity never waited for them.
    done = subprocess.run([sys.executable, "-c", REAP], capture_output=True, text=True, timeout=60)
    assert done.stdout == "3 0 done\n", done.stderr  # three zombies before, none after


def _new_pid_namespace() -> bool:
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _new_pid_namespace(), reason="needs a new pid namespace (unshare, as root): the loop as pid "
                                                    "1; stop_all, which it calls, is tested above everywhere")
def test_as_pid_1_it_stops_the_others_on_sigterm_and_ends() -> None:
    # As in a container: a shell makes a child, then becomes the keeper (pid 1), which the child outlives.
    keeper_cmd = f"sleep 60 & exec {sys.executable} -m face_organizer.keeper"
    outer = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", keeper_cmd],
                             stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert outer.stderr.readline().startswith("face-organizer keeper: up; docker exec runs are given SIGTERM")
        (first,) = child_processes(outer.pid)  # pid 1 inside
        assert len(child_processes(first)) == 1  # the sleep
        os.kill(first, signal.SIGTERM)
        assert outer.wait(timeout=30) == 0
        said = outer.stderr.read()
        assert "stopping 1 process(es) so that runs save their progress: 2 (sleep 60)" in said
        assert "all stopped in " in said
    finally:
        outer.kill()
        outer.wait()
