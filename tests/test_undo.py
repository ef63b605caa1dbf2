"""undo_move: the images of a cluster_faces --link-mode move, back where they were embedded."""

from __future__ import annotations

import codecs
import csv
import io
import os
from collections import Counter
from pathlib import Path

import pytest

from clusterrun import obama_biden_library, private_copy
from face_organizer import organize, relocate
from face_organizer.cli import common
from face_organizer.cli.main import main as umbrella
from face_organizer.cli.undo import main as undo_main
from face_organizer.cluster_stage import ClusterConfig, cluster_faces
from face_organizer.errors import SetupError


def run_cli(args: list[str]) -> int:
    return common.run(undo_main, args)


def _moved(two_person, tmp_path: Path):
    """(embeddings, {image path: its bytes}, output) after a move into person folders."""
    ef = private_copy(two_person, tmp_path)
    content = {p: Path(p).read_bytes() for p in ef.rows.paths}
    out = tmp_path / "sorted"
    report = cluster_faces(ef, str(out), ClusterConfig(clusters=2, link_mode="move", previews=False), progress=False)
    assert not any(Path(p).exists() for p in content)
    assert f"moved: undo_move.py {out} puts them back where they were embedded" in report.lines()  # said where
    return ef, content, out


def test_undo_puts_every_image_back_and_a_second_run_finds_them_there(two_person, tmp_path, capsys) -> None:
    ef, content, out = _moved(two_person, tmp_path)
    assert run_cli([str(out), "--dry-run", "-q"]) == 0
    assert f"would put back: {len(content)} images where they were embedded, from {out}" in capsys.readouterr().out
    assert not any(Path(p).exists() for p in content)  # a dry run moves nothing
    assert run_cli([str(out), "-q"]) == 0
    assert capsys.readouterr().out.startswith(f"put back: {len(content)} images where they were embedded, from {out}")
    assert all(Path(p).read_bytes() == data for p, data in content.items())  # each image back, byte for byte
    assert not list(out.rglob("*.png"))  # nothing left behind, and the emptied person folders are gone
    assert sorted(p.name for p in out.iterdir()) == sorted([organize.STATE_FILE, "clusters.csv", "people.npy",
                                                            "summary.json"])
    assert umbrella(["undo-move", str(out), "-q"]) == 0
    assert f"already back: {len(content)} images" in capsys.readouterr().out
    # Emptied, the output is another run's like any other: removing it loses nothing now.
    with pytest.raises(SetupError) as refused:
        cluster_faces(ef, str(out), ClusterConfig(clusters=3, link_mode="move", previews=False), progress=False)
    assert str(refused.value).endswith("(clusters 2, now 3): choose a new --output, or remove it to start over")
    # The same clustering again sorts them as before (the plan is unchanged), moving them once more.
    again = cluster_faces(ef, str(out), ClusterConfig(clusters=2, link_mode="move", previews=False), progress=False)
    assert again.status == {"placed": len(content)}
    with pytest.raises(SetupError, match="which removing it would delete"):
        cluster_faces(ef, str(out), ClusterConfig(clusters=3, link_mode="move", previews=False), progress=False)


def test_undo_finds_the_images_in_folders_renamed_since(two_person, tmp_path, capsys) -> None:
    # person_A renamed "blair" after the move, person_B's images moved into it, and one image moved
    # by hand into outliers/: undo (and --moved-to, which reads the same table) finds each where it is.
    ef, content, out = _moved(two_person, tmp_path)
    (out / "person_A").rename(out / "blair")
    for image in list((out / "person_B").rglob("*.png")):
        target = out / "blair" / image.relative_to(out / "person_B")
        target.parent.mkdir(parents=True, exist_ok=True)
        image.rename(target)
    wrong = sorted((out / "blair").rglob("*.png"))[3]  # a face the user took for a stranger's, moved by hand
    corrected = out / "outliers" / wrong.relative_to(out / "blair")
    corrected.parent.mkdir(parents=True, exist_ok=True)
    wrong.rename(corrected)
    table = out / "clusters.csv"  # and the table opened in Excel and saved as "CSV UTF-8", which starts with a BOM
    table.write_bytes(codecs.BOM_UTF8 + table.read_bytes())
    assert run_cli([str(out), "-q"]) == 0
    assert capsys.readouterr().out.startswith(f"put back: {len(content)} images where they were embedded")
    assert all(Path(p).read_bytes() == data for p, data in content.items())
    table.write_text("name,folder\nx.png,blair\n")  # not the table now: named as the argument, not --moved-to
    assert run_cli([str(out), "-q"]) == 2
    assert capsys.readouterr().err == f"Error: {out}: {table} is not a cluster_faces table (no path and destination " \
                                      "columns)\n"


def test_images_dropped_at_the_top_of_another_folder_are_found_there(two_person, tmp_path, capsys) -> None:
    # Faces corrected by hand in a file manager, which drops a file onto a folder at its top: person_A/2001/x.png
    # to outliers/x.png, person_B/2002/y.png to person_A/y.png, and one onto the output itself. Undo put none
    # back, said they were no longer in the output, and left them there; it also counted an image whose path
    # holds another file as already back.
    ef, content, out = _moved(two_person, tmp_path)
    with open(out / "clusters.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    names = Counter((Path(r["path"]).name, r["bytes"]) for r in rows)
    dropped = {}
    for folder, onto in (("person_A", "outliers"), ("person_B", "person_A"), ("person_B", ".")):  # . the output's top
        row = next(r for r in rows if r["cluster"] == folder and names[Path(r["path"]).name, r["bytes"]] == 1
                   and r["path"] not in dropped)
        source = Path(row["destination"])
        assert source.parent != out / folder and source.is_relative_to(out / folder)  # in a subfolder of its own
        dropped[row["path"]] = source.rename(out / onto / source.name)
    taken = next(p for p in content if p not in dropped)
    Path(taken).write_bytes(b"a new file at the same path")
    assert run_cli([str(out), "-q"]) == 1
    printed = capsys.readouterr().out
    assert printed.startswith(f"put back: {len(content) - 1} images where they were embedded")
    assert "already back" not in printed and "not in" not in printed
    assert all(Path(p).read_bytes() == content[p] for p in dropped) and not any(f.exists() for f in dropped.values())
    assert [p.name for p in out.rglob("*.png")] == [Path(taken).name]
    # In a table without the images' sizes (written before they were kept), a name is taken only where no
    # other image of the output has it: frame_0001.png of each year folder is left where it was dropped.
    ef, content, out = _moved(two_person, tmp_path / "again")
    table = out / "clusters.csv"
    with open(table, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, [c for c in rows[0] if c != "bytes"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    shared_row = next(r for r in rows if r["cluster"] == "person_A")
    shared = Path(shared_row["destination"])
    assert sum(Path(r["path"]).name == shared.name for r in rows) > 1
    shared.rename(out / "outliers" / shared.name)
    (out / "notes.txt").write_text("who is who")  # not an image: not named, nor kept from counting as emptied
    (out / "person_B" / "checked").mkdir()  # and one dropped into a folder made by hand in another: found nowhere
    nested_row = next(r for r in rows if r["cluster"] == "person_B")
    nested = Path(nested_row["destination"]).rename(out / "person_B" / "checked" / Path(nested_row["path"]).name)
    for dry in (["--dry-run"], []):
        assert run_cli([str(out), "-q"] + dry) == 1  # said, and non-zero: the output is not emptied
        printed = capsys.readouterr().out
        assert f"not in {out} any more: 2 images" in printed
        assert (f"left in {out}: 2 other images, not where the move put any (moved there by hand, or added since); "
                f"put these back by hand:\n  {out / 'outliers' / shared.name}\n  {nested}\n") in printed
    assert sorted(p.relative_to(out) for p in out.rglob("*.png")) == [Path("outliers", shared.name),
                                                                       nested.relative_to(out)]
    # Not marked emptied: another clustering into it is refused as one that would delete the images it holds.
    with pytest.raises(SetupError, match="which removing it would delete"):
        cluster_faces(ef, str(out), ClusterConfig(clusters=3, link_mode="move", previews=False), progress=False)
    for row, left in ((shared_row, out / "outliers" / shared.name), (nested_row, nested)):
        left.rename(row["path"])  # put back by hand, as the report asks
    assert run_cli([str(out), "-q"]) == 0  # emptied now: the note left beside the table does not count
    assert (out / "notes.txt").exists() and (organize.saved_state(str(out)) or {}).get("undone")


def test_a_table_saved_by_excel_in_the_windows_code_page_is_read(video_crops, models, tmp_path, capsys) -> None:
    # clusters.csv opened in Excel and saved as "CSV (Comma delimited)": in the Windows code page (ü is one byte),
    # with semicolons where the list separator is one. Undo found none of the images whose names hold such a
    # letter, and said they were no longer in the output; the Central European and Cyrillic code pages were not
    # tried (ř and ж are one byte there). A table of images named in Latin-1 on disk (not UTF-8 either, as
    # written) is still read as written.
    from face_organizer import embfile
    from face_organizer.embed_run import run_embeddings

    for case, letter in (("cp1252", "ü".encode()), ("cp1250", "ř".encode()), ("cp1251", "ж".encode()),
                         ("latin1", b"\xfc")):
        root = tmp_path / case
        folder = root / "input" / os.fsdecode(b"M" + letter + b"ller 2017")
        folder.mkdir(parents=True)
        content = {}
        for i, crop in enumerate(video_crops["Tony_Blair"][:4]):
            path = folder / os.fsdecode(b"fr" + letter + b"h_%d.png" % i)
            path.write_bytes(crop.read_bytes())
            content[str(path)] = crop.read_bytes()
        run_embeddings(sorted(content), root / "emb.pkl", models, inputs=[str(root / "input")], progress=False)
        # the output's own path in an Excel table is in its code page too
        out = root / ("sorted" if case == "latin1" else f"sorted {letter.decode()}")
        cluster_faces(embfile.load(root / "emb.pkl"), str(out), ClusterConfig(clusters=1, link_mode="move",
                                                                              previews=False), progress=False)
        assert not any(Path(p).exists() for p in content)
        table = out / "clusters.csv"
        if case != "latin1":
            rows = list(csv.reader(io.StringIO(table.read_text(encoding="utf-8"), newline="")))
            saved = io.StringIO(newline="")
            csv.writer(saved, delimiter=";", lineterminator="\r\n").writerows(rows)
            table.write_bytes(saved.getvalue().encode(case))
        with pytest.raises(UnicodeDecodeError):
            table.read_bytes().decode("utf-8")
        capsys.readouterr()
        assert run_cli([str(out)]) == 0
        printed = capsys.readouterr()
        assert printed.out.startswith(f"put back: {len(content)} images where they were embedded"), case
        assert all(Path(p).read_bytes() == data for p, data in content.items())
        said = [line for line in printed.err.splitlines() if "saved by Excel" in line]
        assert said == ([] if case == "latin1" else [f"INFO: {table} is in the {relocate.EXCEL_CODE_PAGES[case]} code "
                                                     f"page {case} (saved by Excel as CSV): read as such"]), case


def test_undo_overwrites_nothing_and_an_interrupted_undo_finishes(two_person, tmp_path, monkeypatch, capsys) -> None:
    ef, content, out = _moved(two_person, tmp_path)
    taken = sorted(content)[5]
    Path(taken).write_bytes(b"a new file at the same path")  # an extractor wrote a new frame there since
    real_place, calls = organize.place, list[str]()

    def dying_place(source, dest, mode, **options):
        if len(calls) == 10:
            raise KeyboardInterrupt
        calls.append(dest)
        return real_place(source, dest, mode, **options)

    monkeypatch.setattr("face_organizer.undo.place", dying_place)
    assert run_cli([str(out), "-q"]) == common.EXIT_INTERRUPTED
    back = [p for p in content if Path(p).exists() and p != taken]
    assert len(back) == 10 and all(Path(p).read_bytes() == content[p] for p in back)
    monkeypatch.setattr("face_organizer.undo.place", real_place)
    assert run_cli([str(out), "-q"]) == 1  # one image could not go back: said, and non-zero
    printed = capsys.readouterr().out
    left = [p for p in out.rglob("*.png")]
    assert len(left) == 1 and left[0].read_bytes() == content[taken]
    assert Path(taken).read_bytes() == b"a new file at the same path"
    assert f"left in {out}: 1 image, as a different file is at its path now (nothing is overwritten):" in printed
    assert f"  {left[0]} (its path: {taken})" in printed
    assert all(Path(p).read_bytes() == content[p] for p in content if p != taken)


def test_images_whose_folder_is_gone_stay_in_the_output(two_person, tmp_path, capsys) -> None:
    # The input tree moved to another disk after the move into person folders: undo makes no folder at
    # its old place. A year folder deleted since is gone the same way; the folders still there get
    # their images back.
    ef, content, out = _moved(two_person, tmp_path)
    folders = sorted({Path(p).parent for p in content})
    assert len(folders) >= 2 and all(f.is_dir() and not any(f.iterdir()) for f in folders)  # left, emptied
    (tmp_path / "input").rename(tmp_path / "on_another_disk")
    for dry in (["--dry-run"], []):
        assert run_cli([str(out), "-q"] + dry) == 1
        printed = capsys.readouterr().out
        assert (f"left in {out}: {len(content)} images whose folder is gone ({len(folders)} folders, such as "
                f"{folders[0]}): moved or deleted since") in printed
        assert printed.startswith(f"{'would put back' if dry else 'put back'}: 0 images")
    assert not (tmp_path / "input").exists() and len(list(out.rglob("*.png"))) == len(content)
    (tmp_path / "on_another_disk").rename(tmp_path / "input")
    folders[0].rmdir()
    gone = [p for p in content if Path(p).parent == folders[0]]
    assert run_cli([str(out), "-q"]) == 1
    printed = capsys.readouterr().out
    assert printed.startswith(f"put back: {len(content) - len(gone)} images") and f"such as {folders[0]})" in printed
    assert not folders[0].exists() and all(Path(p).read_bytes() == content[p] for p in content if p not in gone)
    with pytest.raises(SetupError, match="which removing it would delete"):  # it still holds images
        cluster_faces(ef, str(out), ClusterConfig(clusters=3, link_mode="move", previews=False), progress=False)
    folders[0].mkdir()  # made again: its images go back into it
    assert run_cli([str(out), "-q"]) == 0
    assert all(Path(p).read_bytes() == data for p, data in content.items()) and not list(out.rglob("*.png"))


def test_a_tree_moved_since_gets_its_images_back_where_it_is_now(two_person, tmp_path, monkeypatch, capsys) -> None:
    # Moved into person folders in the container (/workspace), undone on the host, where that folder is
    # /srv/faces: the report names the --from and --to that find the folders, and with them the images go back.
    ef, content, out = _moved(two_person, tmp_path / "workspace")
    host = tmp_path / "srv" / "faces"
    host.parent.mkdir()
    (tmp_path / "workspace").rename(host)
    out = host / "sorted"
    (tmp_path / "gone").mkdir()
    monkeypatch.chdir(tmp_path / "gone")
    (tmp_path / "gone").rmdir()  # a shell standing in a folder deleted since: the report still comes
    assert run_cli([str(out), "-q"]) == 1
    assert f"(here: --from {tmp_path / 'workspace'} --to {host} finds them)" in capsys.readouterr().out
    assert run_cli([str(out), "--from", str(tmp_path / "workspace"), "-q"]) == 2
    assert "--from and --to go together" in capsys.readouterr().err
    assert run_cli([str(out), "--from", str(tmp_path / "elsewhere"), "--to", str(host), "-q"]) == 2
    assert f"no image of the output lies under {tmp_path / 'elsewhere'} (they look like " in capsys.readouterr().err
    assert run_cli([str(out), "--from", str(tmp_path / "workspace"), "--to", f"{host}/", "--dry-run", "-q"]) == 0
    assert capsys.readouterr().out.startswith(f"would put back: {len(content)} images where they were embedded, "
                                              f"under {host} instead of {tmp_path / 'workspace'}, from {out}")
    assert run_cli([str(out), "--from", str(tmp_path / "workspace"), "--to", str(host), "-q"]) == 0
    for path, data in content.items():
        assert (host / Path(path).relative_to(tmp_path / "workspace")).read_bytes() == data
    assert not list(out.rglob("*.png")) and not (tmp_path / "workspace").exists()


def test_undo_removes_a_group_photos_copies_once_it_is_back(shared, models, tmp_path) -> None:
    # A photo of Obama and Biden goes to both their folders: a copy in one, the photo itself in the other.
    from face_organizer.embed_run import run_embeddings
    from face_organizer.faces import EmbedOptions
    from face_organizer.images import discover_images
    from face_organizer import embfile

    library = obama_biden_library(shared, tmp_path)
    content = {str(p): p.read_bytes() for p in library.rglob("*") if p.is_file()}
    emb = tmp_path / "photos.pkl"
    run_embeddings(discover_images([library]), emb, models, EmbedOptions(mode="photos"), inputs=[str(library)],
                   progress=False)
    ef = embfile.load(emb)
    out = tmp_path / "out"
    report = cluster_faces(ef, str(out), ClusterConfig(clusters=2, link_mode="move", previews=False), progress=False)
    assert len(set(report.destinations)) > len(set(ef.rows.paths))  # the group photo is in two folders
    assert run_cli([str(out), "-q"]) == 0
    assert all(Path(p).read_bytes() == data for p, data in content.items() if p in set(ef.rows.paths))
    assert not [p for p in out.rglob("*") if p.suffix in (".jpg", ".png", ".jpeg")]


@pytest.mark.parametrize("mode", ["copy", "symlink"])
def test_an_output_no_move_filled_is_refused(two_person, tmp_path, mode, capsys) -> None:
    ef = private_copy(two_person, tmp_path)
    out = tmp_path / "sorted"
    cluster_faces(ef, str(out), ClusterConfig(clusters=2, link_mode=mode, previews=False), progress=False)
    assert run_cli([str(out)]) == 2
    assert (f"Error: {out} was filled with --link-mode {mode}: the images never left where they were embedded, so "
            "there is nothing to put back") in capsys.readouterr().err
    assert run_cli([str(tmp_path / "input")]) == 2
    assert "holds no output of cluster_faces" in capsys.readouterr().err
    assert run_cli([str(tmp_path / "nowhere" / "sorted")]) == 2
    assert "nowhere/sorted is not a folder" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()


def test_a_table_naming_a_relative_path_moves_nothing_there(two_person, tmp_path, monkeypatch, capsys) -> None:
    # clusters.csv is read from the output: a row whose path is not one an image was embedded at
    # (absolute) is not followed, wherever the command runs.
    import csv

    ef, content, out = _moved(two_person, tmp_path)
    extra = out / "person_A" / "extra.png"
    extra.write_bytes(b"not an image the move made")
    table = out / "clusters.csv"
    rows = list(csv.DictReader(table.open(newline="", encoding="utf-8")))
    with table.open("a", newline="", encoding="utf-8") as handle:
        csv.DictWriter(handle, fieldnames=list(rows[0])).writerow({**rows[0], "path": "escape/here.png",
                                                                   "destination": str(extra)})
    monkeypatch.chdir(tmp_path)
    assert run_cli([str(out), "-q"]) == 1  # the file stays in the output, named as one the move did not put there
    assert f"left in {out}: 1 other image, not where the move put any" in capsys.readouterr().out
    assert not (tmp_path / "escape").exists() and extra.read_bytes() == b"not an image the move made"
    assert all(Path(p).read_bytes() == data for p, data in content.items())
