"""Atomic writes, one writer per output, and what happens where the filesystem cannot lock."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from face_organizer import fsutil
from face_organizer.errors import SetupError


def test_second_holder_is_refused_and_the_lock_file_goes_away(tmp_path) -> None:
    output = tmp_path / "embeddings_gpu0.pkl"
    with fsutil.exclusive(output, "choose another --output"):
        lock = tmp_path / ".embeddings_gpu0.pkl.lock"
        assert lock.read_text() == str(os.getpid())
        refused = (rf"another process, pid {os.getpid()} \(.*\), is writing .*; choose another --output, or stop it "
                   rf"with kill {os.getpid()} \(its progress is saved\)$")
        with pytest.raises(SetupError, match=refused):
            with fsutil.exclusive(output, "choose another --output"):
                pass
    assert not lock.exists()
    with fsutil.exclusive(output, "again"):  # free once released
        pass


def test_a_filesystem_without_locks_runs_unguarded_with_a_warning(tmp_path, monkeypatch, caplog) -> None:
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fsutil.fcntl, "flock", no_locks)
    ran = []
    with caplog.at_level(logging.WARNING), fsutil.exclusive(tmp_path / "out", "hint"):
        ran.append(True)
    assert ran and "cannot lock" in caplog.text and "would not be stopped" in caplog.text
    assert not (tmp_path / ".out.lock").exists()
    caplog.clear()
    (tmp_path / "emb.pkl").write_bytes(b"an embeddings file")  # a file, as generate_embeddings' --output
    with caplog.at_level(logging.WARNING), fsutil.exclusive(tmp_path / "emb.pkl", "hint"):
        pass
    assert "cannot lock" in caplog.text and "emb.pkl at the same time would not be stopped" in caplog.text


def test_no_room_for_a_lock_file_runs_unguarded_with_a_warning(tmp_path, monkeypatch, caplog) -> None:
    real_open = os.open

    def read_only_parent(path, flags, *args):
        if str(path).endswith(".lock"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(fsutil.os, "open", read_only_parent)
    ran = []
    with caplog.at_level(logging.WARNING), fsutil.exclusive(tmp_path / "out", "hint"):
        ran.append(True)
    assert ran and "cannot lock" in caplog.text and "Permission denied" in caplog.text


def test_a_file_name_at_the_filesystem_limit_is_written_atomically(tmp_path) -> None:
    # The temporary and lock files beside it take only the start of its name, so they fit too.
    target = tmp_path / ("ü" * 100 + "x" * 51 + ".pkl")
    assert len(target.name.encode()) == 255
    with fsutil.exclusive(target, "wait"):
        assert fsutil.lock_path(target).exists()  # locked, not left unguarded
        fsutil.atomic_write_text(target, "whole")
    assert target.read_text() == "whole" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_the_holder_is_the_process_holding_the_lock_not_whichever_has_its_pid_now(tmp_path) -> None:
    # A run killed with kill -9 leaves its lock file; its pid may belong to another process since.
    output = tmp_path / "emb.pkl"
    assert fsutil.lock_holder(output) is None
    fsutil.lock_path(output).write_text(str(os.getpid()))  # alive, but holding nothing
    assert fsutil.lock_holder(output) is None
    with fsutil.exclusive(output, "wait"):
        assert fsutil.lock_holder(output) == os.getpid()
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(output)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        assert fsutil.lock_holder(output) == child.pid
        with pytest.raises(SetupError, match=rf"another process, pid {child.pid} \(\S*python\S* -c .*\), is writing"):
            with fsutil.exclusive(output, "wait"):
                pass
        # The pid a run in another pid namespace wrote (a container's, read on the host) names another process.
        elsewhere = r"another process \(in another container, or outside this one\) is writing"
        for pid in (os.getpid(), 99_999_999):  # a process here that does not hold it, and none at all
            fsutil.lock_path(output).write_text(str(pid))
            with pytest.raises(SetupError, match=elsewhere):
                with fsutil.exclusive(output, "wait"):
                    pass
        fsutil.lock_path(output).write_text(str(child.pid))
    finally:
        child.kill()
        child.wait()
    assert fsutil.lock_holder(output) is None  # killed: the kernel dropped its lock, the file stays
    assert fsutil.lock_path(output).read_text() == str(child.pid)


def test_a_run_starting_while_the_lock_is_looked_at_is_not_refused(tmp_path, monkeypatch) -> None:
    # lock_holder takes a shared lock for an instant; a run taking the lock then waits for it (here a
    # tenth of a second, as on a machine so busy that the look is not let go at once).
    monkeypatch.setattr(fsutil, "LOCK_PATIENCE", 5.0)
    output = tmp_path / "emb.pkl"
    lock = fsutil.lock_path(output)
    lock.write_text("")
    fd = os.open(lock, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    threading.Timer(0.1, os.close, (fd,)).start()
    with fsutil.exclusive(output, "wait"):
        assert lock.read_text() == str(os.getpid())


def test_partial_files_a_killed_writer_left_are_removed_by_the_next_holder_of_the_lock(tmp_path, caplog) -> None:
    output = tmp_path / "embeddings_gpu0.pkl"
    fsutil.atomic_write_bytes(output, b"whole")
    left = [tmp_path / ".embeddings_gpu0.pkl.q8_3kz0a.tmp", tmp_path / ".embeddings_gpu0.pkl.00000000.tmp"]
    kept = [tmp_path / ".embeddings_gpu0.pkl.notes.tmp", tmp_path / ".embeddings_gpu1.pkl.q8_3kz0a.tmp",
            tmp_path / ".embeddings_gpu0.pkl.q8_3kz0a.tmp.bak"]  # not its atomic writes' temporary files
    for path in left + kept:
        path.write_bytes(b"partial")
    (tmp_path / ".embeddings_gpu0.pkl.abcdefgh.tmp").mkdir()
    with caplog.at_level(logging.INFO), fsutil.exclusive(output, "wait"):
        assert not any(p.exists() for p in left)
        assert "removed 2 partial file(s) left beside" in caplog.text
    assert all(p.exists() for p in kept) and output.read_bytes() == b"whole"
    assert (tmp_path / ".embeddings_gpu0.pkl.abcdefgh.tmp").is_dir()


def test_the_filesystem_holding_a_path_is_read_from_the_mount_table(tmp_path) -> None:
    for folder in ("usb drive/sorted", "usb", "usbx"):
        (tmp_path / "media" / folder).mkdir(parents=True)
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\n/dev/sdb1 {tmp_path}/media/usb\\040drive fuseblk rw 0 0\n"
                      f"//nas/share {tmp_path}/media/usb\\040drive/sorted cifs rw 0 0\n"
                      f"tmpfs {tmp_path}/media/usb tmpfs rw 0 0\n")
    kind = lambda path: fsutil.filesystem_type(path, str(mounts))  # noqa: E731
    assert kind(tmp_path / "media" / "usb drive") == "fuseblk"  # "\040" is a space in the table
    assert kind(tmp_path / "media" / "usb drive" / "sorted" / "not yet" / "made") == "cifs"  # the deepest mount
    assert kind(tmp_path / "media" / "usb") == "tmpfs" and kind(tmp_path / "media" / "usbx") == "ext4"
    assert fsutil.filesystem_type(tmp_path, str(tmp_path / "missing")) is None  # no table: not Linux


def test_no_space_left_is_told_from_no_inodes_left_and_from_a_folder_full_of_entries(tmp_path, monkeypatch) -> None:
    # "free some space" sent the user to the wrong thing where the disk had room but no inodes (many small
    # files) or the folder no room for entries (FAT32), as df -h shows space free.
    def disk(blocks: int, free: int, files: int, files_free: int):
        return lambda path: os.statvfs_result((4096, 4096, blocks, free, free, files, files_free, files_free, 0, 255))

    target = tmp_path / "person_A" / "f.png"  # its folder not made yet: the nearest one that is counts
    cases = [(disk(10**7, 10**6, 10**6, 3), "has room for no more files (every inode is used, see `df -i`, though "
                                            "4.10 GB is free): remove files there or sort onto another disk"),
             (disk(10**7, 5 * 10**6, 0, 0), "20.5 GB is free there, so a limit other than space was reached, such as "
                                            "a folder full of entries (about 65,000 on FAT32)"),
             (disk(10**7, 2 * 10**5, 10**6, 9 * 10**5), "free some space"),  # 2%: what the failed write had freed
             (disk(10**5, 10**4, 0, 0), "free some space")]  # a tenth of a small disk is not plenty
    for statvfs, said in cases:
        monkeypatch.setattr(fsutil.os, "statvfs", statvfs)
        advice = fsutil.full_disk_advice(str(target))
        assert advice.startswith(said if said == "free some space" else "") and said in advice
        assert advice.endswith("then re-run the same command: it continues where it stopped")
    assert fsutil.full_disk_advice(str(target), quota=True).startswith("your disk quota is used up")
    assert fsutil.full_disk_advice(None).startswith("free some space")


HOLD_LOCK = """
import sys, time
from face_organizer.fsutil import exclusive
with exclusive(sys.argv[1], "wait"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_an_output_the_container_alone_holds_is_warned_about(tmp_path, monkeypatch, caplog) -> None:
    # docker exec face-organizer … --output ~/emb.pkl: the host's shell makes ~ the host's home, which in the
    # container is a folder of its own filesystem; hours of embeddings went with the next docker compose down.
    monkeypatch.delenv(fsutil.CONTAINER_ENV, raising=False)
    output = tmp_path / "emb.pkl"
    mounts = {"/workspace": ("/workspace", "ext4")}
    monkeypatch.setattr(fsutil, "mount_of", lambda path, *a: mounts.get(str(path), ("/", "overlay")))
    with caplog.at_level("WARNING"), fsutil.exclusive(output, "wait"):
        pass
    assert "inside the container" not in caplog.text  # not in the image: its layout is not known
    monkeypatch.setenv(fsutil.CONTAINER_ENV, "1")
    with caplog.at_level("WARNING"), fsutil.exclusive(output, "wait"):
        pass
    assert (f"{output} is inside the container, not in a folder mounted from the host: it is lost when the container "
            "is removed (docker compose down, an upgrade of the image); write it under /workspace") in caplog.text
    caplog.clear()
    mounts[str(output)] = ("/workspace", "ext4")  # in the mounted folder: nothing to say
    with caplog.at_level("WARNING"), fsutil.exclusive(output, "wait"):
        pass
    assert not caplog.text


def test_a_path_of_the_host_or_of_windows_is_named_as_such_when_not_found(tmp_path, monkeypatch, capsys) -> None:
    # docker exec face-organizer … --input /home/me/faces (the host's path) or C:\Users\me\faces (Docker Desktop):
    # "input folder not found" said nothing of why.
    from face_organizer.cli import common
    from face_organizer.cli.cluster import main as cluster_main
    from face_organizer.cli.embed import main as embed_main
    from face_organizer.cli.search import main as search_main

    mounts = tmp_path / "mounts"
    mounts.write_text("overlay / overlay rw 0 0\nproc /proc proc rw 0 0\n/dev/sda1 /workspace ext4 rw 0 0\n"
                      "/dev/sda1 /media ext4 ro 0 0\n/dev/sda1 /etc/hosts ext4 rw 0 0\nshm /dev/shm tmpfs rw 0 0\n"
                      "/dev/sda1 /usr/bin/nvidia-smi ext4 ro 0 0\n/dev/sdb1 /models ext4 rw 0 0\n")
    assert fsutil.host_mounts(str(mounts)) == ["/media", "/models", "/workspace"]
    hint = lambda path: fsutil.missing_path_hint(path, str(mounts))  # noqa: E731
    windows = "; that is a Windows path: name the folder as it is mounted where this runs (such as /workspace/…)"
    monkeypatch.delenv(fsutil.CONTAINER_ENV, raising=False)
    assert hint("/home/me/faces") == ""  # outside the image, its layout is not known
    assert hint("C:\\Users\\me\\faces") == hint("D:/faces") == hint("\\\\nas\\photos") == windows
    monkeypatch.setenv(fsutil.CONTAINER_ENV, "1")
    host = "; in the container the host's folders are where they are mounted: /media, /models, /workspace"
    assert hint("/home/me/faces") == hint("/mnt/c/faces") == host
    assert hint("/workspace/inptu/2017") == hint("/media") == hint("faces/2017") == ""  # a typo, or relative
    monkeypatch.setattr(fsutil, "host_mounts", lambda *a: ["/media", "/models", "/workspace"])
    assert common.run(embed_main, ["--input", "/home/me/faces/2017", "--output", str(tmp_path / "e.pkl")]) == 2
    assert capsys.readouterr().err == f"Error: input folder not found: /home/me/faces/2017{host}\n"
    assert common.run(embed_main, ["--input", str(tmp_path), "--file-list", "C:\\lists\\2017.txt", "--output",
                                   str(tmp_path / "e.pkl")]) == 2
    assert capsys.readouterr().err == ("Error: cannot read --file-list C:\\lists\\2017.txt: No such file or directory"
                                       f"{windows}\n")
    assert common.run(cluster_main, ["--embeddings", "D:/faces/e.pkl", "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == ("Error: cannot read embeddings file D:/faces/e.pkl: No such file or directory"
                                       f"{windows}\n")
    assert common.run(search_main, ["--embeddings", "e.pkl", "--query", "/home/me/me.jpg", "--output", "o"]) == 2
    assert capsys.readouterr().err == f"Error: query not found: /home/me/me.jpg{host}\n"
    # The earlier outputs that --people-from, --moved-to and undo_move.py name.
    from face_organizer import embfile
    from face_organizer.cli.undo import main as undo_main
    from face_organizer.faces import FaceRows

    emb = tmp_path / "emb.pkl"
    (tmp_path / "a.png").write_bytes(b"an image")
    rows = FaceRows([str(tmp_path / "a.png")], np.eye(1, 8, dtype=np.float32), np.ones(1, bool), np.ones(1, np.float32),
                    np.zeros((1, 4), np.float32), np.zeros(1, np.int32))
    embfile.save(emb, embfile.EmbeddingsFile(rows, [], [], {"format_version": 1, "embedding_size": 8}))
    for option in ("--people-from", "--moved-to"):
        assert common.run(cluster_main, ["--embeddings", str(emb), "--output", str(tmp_path / "o"), option,
                                         "/home/me/sorted_2017"]) == 2
        last = capsys.readouterr().err.splitlines()[-1]  # after the warning on an output inside the container
        assert last == f"Error: {option} /home/me/sorted_2017: no such folder{host}"
    assert common.run(undo_main, ["E:\\sorted"]) == 2
    assert capsys.readouterr().err == ("Error: E:\\sorted is not a folder: name the --output folder of a cluster_faces "
                                       f"--link-mode move{windows}\n")


def test_an_atomic_write_syncs_its_folder_after_the_rename(tmp_path, monkeypatch) -> None:
    # The file's bytes were synced but not the rename that puts it in place: after a power cut the folder could
    # still show the old file, or none, where a later step (checkpoints removed) took the new one as written.
    import stat

    synced, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        return real_fsync(fd)

    def replace(src, dst):
        synced.append("renamed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with fsutil.atomic_open(tmp_path / "emb.pkl") as handle:
        handle.write(b"embeddings")
    assert synced == ["file", "renamed", "folder"] and (tmp_path / "emb.pkl").read_bytes() == b"embeddings"
