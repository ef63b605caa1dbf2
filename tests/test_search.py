"""Face search on real faces: the right person, more with several references and
with expansion, clear errors for bad queries and mismatched models."""

from __future__ import annotations

import csv
import json
import logging
import pickle
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from face_organizer import embfile, preview
from face_organizer.cli import common
from face_organizer.cli.embed import main as embed_main
from face_organizer.cli.search import main as search_main
from face_organizer.errors import SetupError
from face_organizer.faces import EmbedOptions, embed_batch
from face_organizer.images import read_image
from face_organizer.search import choose_faces, embed_reference, search, undecided
from face_organizer.search_stage import check_same_model, find_person

from conftest import row_of_small_faces


def run_cli(args: list[str]) -> int:
    return common.run(search_main, args)


@pytest.fixture(scope="module")
def lfw_index(lfw_subset):
    emb, identity = lfw_subset
    ef = embfile.load(emb)
    truth = np.array([identity[p] for p in ef.rows.paths])
    people = [p for p, c in Counter(truth).items() if c >= 8]
    return ef, truth, people


def _pr(ef, truth, person, refs_rows, models, expand=True):
    refs = [embed_reference(ef.rows.paths[r], models).embedding for r in refs_rows]
    found = search(ef.rows.embeddings, refs, expand=expand)
    hits = np.setdiff1d(found.index, refs_rows)
    relevant = np.setdiff1d(np.nonzero(truth == person)[0], refs_rows)
    tp = int(np.isin(hits, relevant).sum())
    return tp / max(1, len(hits)), tp / len(relevant)


def test_reference_finds_that_person_and_not_others(lfw_index, models) -> None:
    ef, truth, people = lfw_index
    scores = [_pr(ef, truth, p, np.nonzero(truth == p)[0][:1], models) for p in people]
    precision, recall = np.mean([s[0] for s in scores]), np.mean([s[1] for s in scores])
    assert precision >= 0.95 and recall >= 0.85, (precision, recall)


def test_several_references_and_expansion_raise_recall(lfw_index, models) -> None:
    ef, truth, people = lfw_index
    one = [_pr(ef, truth, p, np.nonzero(truth == p)[0][:1], models, expand=False) for p in people]
    three = [_pr(ef, truth, p, np.nonzero(truth == p)[0][:3], models, expand=False) for p in people]
    expanded = [_pr(ef, truth, p, np.nonzero(truth == p)[0][:1], models, expand=True) for p in people]
    recall_one, recall_three = np.mean([s[1] for s in one]), np.mean([s[1] for s in three])
    recall_expanded = np.mean([s[1] for s in expanded])
    assert recall_three > recall_one
    assert recall_expanded > recall_one
    assert np.mean([s[0] for s in expanded]) >= np.mean([s[0] for s in one]) - 0.02


def test_group_photo_query_uses_largest_face(shared, models, caplog) -> None:
    folder = shared / "datasets" / "face_recognition_examples" / "_multi_face"
    photo = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[0]
    ref = embed_reference(str(photo), models)
    with caplog.at_level(logging.WARNING):
        assert choose_faces([ref]) == [ref]  # nothing to compare with
    assert ref.faces_in_photo >= 2 and "using the largest" in caplog.text
    image = read_image(photo)
    faces = embed_batch([(str(photo), image)], models, EmbedOptions(mode="photos")).rows
    area = (faces.bbox[:, 2] - faces.bbox[:, 0]) * (faces.bbox[:, 3] - faces.bbox[:, 1])
    np.testing.assert_allclose(ref.embedding, faces.embeddings[int(np.argmax(area))], atol=1e-5)


def test_a_reference_photo_lying_on_its_side_is_turned(lfw, lfw_labels, models, tmp_path) -> None:
    """A reference stored sideways without an orientation tag (an old camera's portrait shot) is embedded as the
    same photo upright, where its face was embedded as noise."""
    path = lfw / lfw_labels[0]["path"]
    upright = embed_reference(str(path), models).embedding
    for turn in (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE):
        turned = tmp_path / f"turned{turn}.png"
        cv2.imwrite(str(turned), cv2.rotate(read_image(path), turn))
        assert float(embed_reference(str(turned), models).embedding @ upright) > 0.9, turn


def test_references_are_detected_at_the_size_the_collection_was(lfw, lfw_labels, testpack_dir, models, tmp_path,
                                                                capsys) -> None:
    """A collection embedded with --det-size 1280 holds the small faces of large group photos. A group photo as
    the reference is detected at that size too: at 640 no face of it is found, and the search stopped."""
    people = [r for r in lfw_labels if r["kind"] != "single"]
    group = row_of_small_faces(lfw, people[:10], tmp_path / "photos" / "group.jpg")
    with pytest.raises(SetupError, match="no face found in query"):
        embed_reference(str(group), models)
    assert embed_reference(str(group), models, 1280).faces_in_photo >= 8
    emb = tmp_path / "photos.pkl"
    assert common.run(embed_main, ["--input", str(group.parent), "--output", str(emb), "--mode", "photos",
                                   "--det-size", "1280", "--model", str(testpack_dir), "-q"]) == 0
    capsys.readouterr()
    assert run_cli(["--embeddings", str(emb), "--query", str(group), "--output", str(tmp_path / "found"),
                    "--no-expand", "--model", str(testpack_dir), "-q"]) == 0
    assert f"query {group} shows" in capsys.readouterr().err
    matches = list(csv.DictReader(open(tmp_path / "found" / "matches.csv", encoding="utf-8")))
    assert matches and {m["path"] for m in matches} == {str(group)}  # in the collection's one photo
    # Files of several runs: references are detected at the largest size any of them was.
    crops = embfile.load(emb)
    crops.meta = {**crops.meta, "photo_det_size": 640}
    assert embfile.merge([crops, embfile.load(emb)], ["a", "b"]).meta["photo_det_size"] == 1280


def test_group_photo_among_references_gives_the_face_they_share(shared, testpack_dir, models, tmp_path, capsys) -> None:
    # Rose Leslie beside Kit Harington, whose face is the larger: with a photo of her alone as the
    # other reference, the search is for her, and none of his photos are matched.
    examples = shared / "datasets" / "face_recognition_examples"
    pair = examples / "_multi_face" / "examples__knn_examples__test__kit_with_rose.jpg"
    emb = tmp_path / "photos.pkl"
    others = examples / "_multi_face" / "examples__knn_examples__test__obama_and_biden.jpg"
    people = [str(examples / p) for p in ("rose_leslie", "kit_harington", "barack_obama", "joe_biden")]
    assert common.run(embed_main, ["--input", *people, str(pair), "--output", str(emb), "--mode", "photos",
                                   "--model", str(testpack_dir), "--device", "cpu", "--workers", "0", "-q"]) == 0
    for alone, person in ((examples / "rose_leslie" / "img1.jpg", "rose_leslie"),
                          (examples / "kit_harington" / "john1.jpeg", "kit_harington")):
        out = tmp_path / person
        assert run_cli(["--embeddings", str(emb), "--query", str(alone), str(pair), "--output", str(out),
                        "--threshold", "0.4", "--no-expand", "--model", str(testpack_dir), "-q"]) == 0
        rows = list(csv.DictReader(open(out / "matches.csv", newline="", encoding="utf-8")))
        folders = Counter(Path(r["path"]).parent.name for r in rows)
        assert folders[person] == len(list((examples / person).iterdir())), folders  # all of them
        assert set(folders) == {person, "_multi_face"} and folders["_multi_face"] == 1, folders
        # The contact sheet shows the face searched for in the group photo, cropped from it.
        used = choose_faces([embed_reference(str(alone), models), embed_reference(str(pair), models)])[1]
        shown = read_image(out / "previews" / "matches.jpg")[:preview.TILE, preview.TILE:2 * preview.TILE].astype(int)
        differ = [np.abs(shown - preview._tile(preview.SheetFace(str(pair), box, ""))).mean() for box in used.boxes]
        assert differ[used.chosen] < 6 < 20 < differ[1 - used.chosen], differ  # JPEG-compressed
        assert (used.chosen == 0) == (person == "kit_harington")  # his is the larger face
    # A group photo in which she is not: no face of it is like hers, so it is left out and said so,
    # rather than searching for whichever of Obama and Biden looks least unlike her.
    capsys.readouterr()
    out = tmp_path / "not_in_it"
    assert run_cli(["--embeddings", str(emb), "--query", str(examples / "rose_leslie" / "img1.jpg"), str(others),
                    "--output", str(out), "--threshold", "0.4", "--no-expand", "--no-previews",
                    "--model", str(testpack_dir), "-q"]) == 0
    printed = capsys.readouterr().out
    assert f"searched with 1 of 2 queries; left out: none of the 3 faces in {others} is like the other" in printed
    rows = list(csv.DictReader(open(out / "matches.csv", newline="", encoding="utf-8")))
    assert {Path(r["path"]).parent.name for r in rows} == {"rose_leslie", "_multi_face"}


def test_group_photos_alone_give_the_person_they_share(shared, models, tmp_path) -> None:
    # Two group photos, each of Rose Leslie (the smaller face) with someone else: hers in both.
    examples = shared / "datasets" / "face_recognition_examples"
    groups = []
    for i, (rose, other) in enumerate((("img1.jpg", "barack_obama/obama.jpg"), ("img2.jpg", "joe_biden/biden.jpg"))):
        small, big = read_image(examples / "rose_leslie" / rose), read_image(examples / other)
        height = big.shape[0]
        small = cv2.resize(small, (int(small.shape[1] * 0.4 * height / small.shape[0]), int(0.4 * height)))
        small = cv2.copyMakeBorder(small, 0, height - small.shape[0], 0, 0, cv2.BORDER_CONSTANT)
        cv2.imwrite(str(tmp_path / f"group{i}.jpg"), cv2.hconcat([small, big]))
        groups.append(embed_reference(str(tmp_path / f"group{i}.jpg"), models))
    assert [g.faces_in_photo for g in groups] == [2, 2]
    for group, rose in zip(choose_faces(groups), ("img1.jpg", "img2.jpg")):
        alone = embed_reference(str(examples / "rose_leslie" / rose), models).embedding
        assert float(group.embedding @ alone) > 0.9 and float(group.faces[0] @ alone) < 0.3  # not the largest


def _pairs(lfw: Path, tmp_path: Path, count: int) -> list[Path]:
    """Photos of Tony Blair (left) beside Donald Rumsfeld (right), LFW dev's first ``count`` of each."""
    paths = []
    for i in range(1, count + 1):
        left = read_image(lfw / "Tony_Blair" / f"Tony_Blair_{i:04d}.jpg")
        right = read_image(lfw / "Donald_Rumsfeld" / f"Donald_Rumsfeld_{i:04d}.jpg")
        paths.append(tmp_path / f"blair_and_rumsfeld_{i}.jpg")
        cv2.imwrite(str(paths[-1]), cv2.hconcat([left, right]))
    return paths


def test_a_photo_of_the_person_alone_decides_among_group_photos_of_the_same_two(lfw, lfw_subset, testpack_dir,
                                                                                 models, tmp_path, capsys) -> None:
    # One photo of Blair alone and eight of him beside Rumsfeld. Counting every other reference
    # alike, the group photos outvoted it: Rumsfeld's face was chosen in four of the eight.
    pairs = _pairs(lfw, tmp_path, 8)
    alone = embed_reference(str(lfw / "Tony_Blair" / "Tony_Blair_0010.jpg"), models)
    chosen = choose_faces([alone, *(embed_reference(str(p), models) for p in pairs)])[1:]
    assert all(r.faces_in_photo >= 2 for r in chosen)
    centres = [float(r.boxes[r.chosen][0] + r.boxes[r.chosen][2]) / 2 for r in chosen if r.boxes is not None]
    assert len(centres) == len(chosen)
    assert all(x < 250 for x in centres), centres  # Blair's, on the left, in every one
    assert not undecided(chosen, 0.4)
    # Without it, nothing says which of the two is meant: the search says so.
    together = choose_faces([embed_reference(str(p), models) for p in pairs[:3]])
    assert undecided(together, 0.4) == together
    emb, _ = lfw_subset
    capsys.readouterr()
    assert run_cli(["--embeddings", str(emb), "--query", *map(str, pairs[:3]), "--output", str(tmp_path / "out"),
                    "--no-previews", "--model", str(testpack_dir), "-q"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "show the same people together" in line]
    assert len(said) == 1 and f"the 3 group photos show the same people together ({pairs[0]}, " in said[0], said


def test_a_reference_of_someone_else_among_alike_ones_is_left_out(lfw_subset, lfw, testpack_dir, tmp_path,
                                                                    capsys) -> None:
    # Three photos of Blair and one of Rumsfeld filed with them by mistake: searched for too, Rumsfeld's
    # photo filled the output with his matches beside Blair's.
    emb, identity = lfw_subset
    blair = [lfw / "Tony_Blair" / f"Tony_Blair_{i:04d}.jpg" for i in (2, 4, 6)]
    rumsfeld = lfw / "Donald_Rumsfeld" / "Donald_Rumsfeld_0002.jpg"
    out = tmp_path / "blair"
    assert run_cli(["--embeddings", str(emb), "--query", *map(str, blair), str(rumsfeld), "--output", str(out),
                    "--no-previews", "--model", str(testpack_dir), "-q"]) == 0
    captured = capsys.readouterr()
    assert f"searched with 3 of 4 queries; left out: the face in {rumsfeld} is like none of the 3 alike references" \
        in captured.out
    assert "likely someone else; this query is left out" in captured.err
    found = Counter(identity[r["path"]] for r in csv.DictReader(open(out / "matches.csv", encoding="utf-8")))
    assert found["Tony_Blair"] >= 40 and "Donald_Rumsfeld" not in found, found
    # One of each: nothing says which is meant, so both are searched for, and the search says so.
    out = tmp_path / "both"
    assert run_cli(["--embeddings", str(emb), "--query", str(blair[0]), str(rumsfeld), "--output", str(out),
                    "--no-previews", "--model", str(testpack_dir), "-q"]) == 0
    assert "WARNING: the 2 references are not all alike: they fall into 2 sets" in capsys.readouterr().err
    found = Counter(identity[r["path"]] for r in csv.DictReader(open(out / "matches.csv", encoding="utf-8")))
    assert found["Tony_Blair"] >= 40 and found["Donald_Rumsfeld"] >= 40, found


def test_references_are_alike_through_each_other() -> None:
    # a ~ b and b ~ c make one set though a and c are apart (a person at two ages); d is alone.
    from face_organizer.search import Reference, alike_sets

    a, e, d = np.eye(3, 8, dtype=np.float32)
    c = (a + 2 * e) / np.linalg.norm(a + 2 * e)  # 0.45 to a
    b = (a + c) / np.linalg.norm(a + c)  # 0.85 to each
    refs = [Reference(str(i), v[None], None) for i, v in enumerate((d, a, b, c))]
    assert float(a @ c) < 0.5 <= min(float(a @ b), float(b @ c))
    assert alike_sets(refs, 0.5) == [[1, 2, 3], [0]]
    assert alike_sets(refs, -1.0) == [[0, 1, 2, 3]] and alike_sets([], 0.5) == []


def test_cli_search_writes_sorted_matches(lfw_subset, lfw, testpack_dir, models, tmp_path, capsys) -> None:
    emb, identity = lfw_subset
    query = lfw / "Jean_Chretien" / "Jean_Chretien_0001.jpg"
    out = tmp_path / "her"
    # A dry run first: the same search, nothing written, and the weakest matches named.
    assert run_cli(["--embeddings", str(emb), "--query", str(query), "--output", str(out),
                    "--model", str(testpack_dir), "-q", "--dry-run"]) == 0
    dry = capsys.readouterr().out.splitlines()
    assert not out.exists() and not (tmp_path / ".her.lock").exists()
    assert run_cli(["--embeddings", str(emb), "--query", str(query), "--output", str(out),
                    "--model", str(testpack_dir), "-q"]) == 0
    rows = list(csv.DictReader(open(out / "matches.csv", newline="", encoding="utf-8")))
    sims = [float(r["similarity"]) for r in rows]
    assert sims == sorted(sims, reverse=True) and len(rows) >= 10
    assert dry[0].startswith(f"{len(rows)} matching faces in {len(rows)} images (") and \
        dry[0].endswith(f"; dry run: nothing written to {out}")
    assert dry[2].startswith("the weakest matches, where a wrong one would show first")
    weakest = [line.split(maxsplit=1) for line in dry[3:]]
    assert [path for _, path in weakest] == [r["path"] for r in rows[::-1][:10]]
    assert all(abs(float(sim) - float(r["similarity"])) < 6e-4 for (sim, _), r in zip(weakest, rows[::-1]))
    assert np.mean([identity[r["path"]] == "Jean_Chretien" for r in rows]) >= 0.95
    assert all(Path(r["destination"]).is_file() for r in rows)
    printed = capsys.readouterr().out
    assert "matching faces" in printed and "similarity threshold" in printed
    # index.html shows the reference first, then the best matches, then the weakest (framed).
    sheet = read_image(out / "previews" / "matches.jpg")
    tile = preview._tile(preview.SheetFace(str(query), embed_reference(str(query), models).box, ""))
    assert np.abs(sheet[:preview.TILE, :preview.TILE].astype(int) - tile).mean() < 4  # JPEG-compressed
    best = preview._tile(preview.SheetFace(rows[0]["destination"], None, ""))
    assert np.abs(sheet[:preview.TILE, preview.TILE:2 * preview.TILE].astype(int) - best).mean() < 4
    index = (out / "index.html").read_text()
    assert "matches.jpg" in index and "loading='lazy'" in index
    assert "(first the reference, then the best matches; red: the weakest, where a wrong match would show first)" in index
    assert f"the first tile is the reference ({query.name}), then the best matches" in index
    # Its folder renamed since, the same search again would copy the matches a second time: refused.
    (folder,) = [p for p in out.iterdir() if p.is_dir() and p.name != "previews"]
    folder.rename(out / "hers")
    capsys.readouterr()
    assert run_cli(["--embeddings", str(emb), "--query", str(query), "--output", str(out),
                    "--model", str(testpack_dir), "-q"]) == 2
    assert f"{folder.name}/ is hers/ now; this run would place those images again" in capsys.readouterr().err
    assert not folder.exists()
    assert run_cli(["--embeddings", str(emb), "--query", str(query), "--output", str(tmp_path / "none"),
                    "--model", str(testpack_dir), "-q", "--dry-run", "--threshold", "1"]) == 0  # no match: a dry run
    assert capsys.readouterr().out.splitlines() == [
        f"0 matching faces in 0 images (0 found by query expansion) out of {len(embfile.load(emb).rows)} faces; dry "
        f"run: nothing written to {tmp_path / 'none'}", "similarity threshold 1.000 (--threshold)"]
    assert not (tmp_path / "none").exists()


def test_the_contact_sheet_shows_a_copied_match_once(lfw_subset, lfw, testpack_dir, tmp_path, monkeypatch) -> None:
    """Copies of her photos in an album folder, in a second embeddings file as stage 1 makes them (the same rows
    under other paths): each is a match and is placed, but the contact sheet shows each face once."""
    from dataclasses import replace

    from face_organizer import search_stage

    emb, identity = lfw_subset
    ef = embfile.load(emb)
    hers = [i for i, p in enumerate(ef.rows.paths) if identity[p] == "Jean_Chretien"]
    album = tmp_path / "album"
    album.mkdir()
    copied = [str(album / f"copy of {Path(ef.rows.paths[i]).name}") for i in hers]
    for i, path in zip(hers, copied):
        Path(path).write_bytes(Path(ef.rows.paths[i]).read_bytes())
    rows = replace(ef.rows.select(np.asarray(hers)), paths=copied)
    embfile.save(tmp_path / "album.pkl", embfile.EmbeddingsFile(rows, [], [], {**ef.meta, "inputs": [str(album)]}))
    sheets = []
    make_sheet = search_stage.contact_sheet
    monkeypatch.setattr(search_stage, "contact_sheet", lambda *groups: sheets.append(groups) or make_sheet(*groups))
    out = tmp_path / "her"
    assert run_cli(["--embeddings", str(emb), str(tmp_path / "album.pkl"), "--query",
                    str(lfw / "Jean_Chretien" / "Jean_Chretien_0001.jpg"), "--output", str(out),
                    "--model", str(testpack_dir), "-q"]) == 0
    with open(out / "matches.csv", newline="", encoding="utf-8") as handle:
        matched = [r["path"] for r in csv.DictReader(handle)]
    assert set(copied) <= set(matched)  # every copy found and placed
    originals = dict(zip(copied, (ef.rows.paths[i] for i in hers)))
    (first, weakest), = sheets
    shown = [originals.get(face.path, face.path) for face in [*first[1:], *weakest]]  # after the reference
    assert len(shown) == len(set(shown)) == min(len(set(matched) - set(copied)), 31), shown


def test_a_model_failing_on_the_query_is_one_line(lfw_subset, lfw, testpack_dir, tmp_path, capsys,
                                                  monkeypatch) -> None:
    # ONNX Runtime's error on the query (a GPU out of memory) ended the search in a traceback.
    emb, _ = lfw_subset

    def failing(path, models, det_size):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : CUDA failure 999: unknown error ;\n GPU=0")

    monkeypatch.setattr("face_organizer.search_stage.embed_reference", failing)
    query = lfw / "Jean_Chretien" / "Jean_Chretien_0001.jpg"
    assert run_cli(["--embeddings", str(emb), "--query", str(query), "--output", str(tmp_path / "o"),
                    "--model", str(testpack_dir)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"Error: embedding the query {query} failed (RuntimeError: [ONNXRuntimeError] : 1 : FAIL : CUDA failure 999: "
        "unknown error ; GPU=0); the model is failing, not the images. Nothing was placed yet: run the same command "
        "again")


def test_bad_query_and_model_mismatch_are_clear(lfw_subset, lfw, testpack_dir, models, tmp_path, capsys) -> None:
    emb, identity = lfw_subset
    (tmp_path / "broken.jpg").write_text("not a photo")
    assert run_cli(["--embeddings", str(emb), "--query", str(tmp_path / "broken.jpg"), "--output", str(tmp_path / "o"),
                    "--model", str(testpack_dir)]) == 2
    assert "cannot use query" in capsys.readouterr().err
    # A query that is not there (a typo) is said at once, before the embeddings are read or a model loaded.
    for queries, said in (([tmp_path / "gone.jpg"], f"query not found: {tmp_path / 'gone.jpg'}"),
                          ([tmp_path / "a.jpg", tmp_path / "b"], f"none of the queries is there: {tmp_path / 'a.jpg'}, "
                                                                 f"{tmp_path / 'b'}")):
        assert run_cli(["--embeddings", str(tmp_path / "no.pkl"), "--query", *map(str, queries), "--output",
                        str(tmp_path / "o"), "--model", str(testpack_dir)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"Error: {said}"]
    # Among several references, one that cannot be used is left out and said so; with none left, it stops.
    cv2.imwrite(str(tmp_path / "wall.png"), np.full((300, 300, 3), 128, np.uint8))  # no face at all
    query = lfw / "Jean_Chretien" / "Jean_Chretien_0001.jpg"
    out = tmp_path / "several"
    assert run_cli(["--embeddings", str(emb), "--query", str(tmp_path / "wall.png"), str(query), str(tmp_path / "broken.jpg"),
                    "--output", str(out), "--model", str(testpack_dir)]) == 0
    printed = capsys.readouterr()
    assert f"searched with 1 of 3 queries; left out: no face found in query {tmp_path / 'wall.png'}" in printed.out
    assert f"cannot use query {tmp_path / 'broken.jpg'}" in printed.out and printed.err.count("WARNING") >= 2
    rows = list(csv.DictReader(open(out / "matches.csv", newline="", encoding="utf-8")))
    assert len(rows) >= 10 and np.mean([identity[r["path"]] == "Jean_Chretien" for r in rows]) >= 0.95
    # A pattern the host's shell left as it was (docker exec: no /workspace there) is expanded here.
    pattern = str(lfw / "Jean_Chretien" / "Jean_Chretien_000[12].jpg")
    assert run_cli(["--embeddings", str(emb), "--query", pattern, "--output", str(tmp_path / "pattern"),
                    "--model", str(testpack_dir)]) == 0
    assert f"INFO: --query {pattern}: {query}, {str(query).replace('0001', '0002')}\n" in capsys.readouterr().err
    assert (tmp_path / "pattern" / "matches.csv").is_file()
    assert run_cli(["--embeddings", str(emb), "--query", str(tmp_path / "wall.png"), str(tmp_path / "broken.jpg"),
                    "--output", str(tmp_path / "none"), "--model", str(testpack_dir)]) == 2
    assert "Error: none of the 2 queries can be used" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("user file")
    assert run_cli(["--embeddings", str(emb), "--query", str(tmp_path / "broken.jpg"), "--output",
                    str(tmp_path / "taken"), "--model", str(testpack_dir)]) == 2
    assert "is not empty (it holds notes.txt)" in capsys.readouterr().err  # before the query is read
    ef = embfile.load(emb)
    query = str(Path(ef.rows.paths[0]))
    ef.rows.paths = ["/workspace/input/" + Path(p).name for p in ef.rows.paths]  # embedded inside a container
    with pytest.raises(SetupError, match="none of the .* images named in the embeddings is where it was embedded"):
        find_person(ef, models, [query], str(tmp_path / "found"), progress=False)
    assert not (tmp_path / "found").exists()
    ef.meta["model_files"] = {"recognition": "w600k_r50.onnx"}
    with pytest.raises(SetupError, match="w600k_r50.onnx"):
        check_same_model(ef, models)
    # A file of the user's own names no model: the one given is used where the sizes match, with a warning.
    own = tmp_path / "own.pkl"
    with open(own, "wb") as handle:
        pickle.dump({"paths": [str(p) for p in embfile.load(emb).rows.paths], "meta": {},
                     "embeddings": embfile.load(emb).rows.embeddings.astype(np.float64)}, handle)
    assert run_cli(["--embeddings", str(own), "--query", query, "--output", str(tmp_path / "own"), "-q"]) == 2
    assert "Error: the embeddings file does not say which model pack made it; pass --model" in capsys.readouterr().err
    assert run_cli(["--embeddings", str(own), "--query", query, "--output", str(tmp_path / "own"), "-q",
                    "--model", str(testpack_dir)]) == 0
    err = capsys.readouterr().err
    assert "WARNING: the embeddings file does not name the model that made it" in err and "Error" not in err
    assert query in {r["path"] for r in csv.DictReader(open(tmp_path / "own" / "matches.csv", encoding="utf-8"))}
    ef.meta = {}
    ef.rows.embeddings = ef.rows.embeddings[:, :64]
    with pytest.raises(SetupError, match=r"made with a model the file does not name \(64-d\)"):
        check_same_model(ef, models)


def test_a_file_without_faces_searches_nothing_and_says_so(lfw_subset, lfw, testpack_dir, tmp_path, capsys) -> None:
    ef = embfile.load(lfw_subset[0])
    embfile.save(tmp_path / "none.pkl", embfile.EmbeddingsFile(ef.rows.select(np.arange(0)), [], [], ef.meta))
    query = lfw / "Jean_Chretien" / "Jean_Chretien_0001.jpg"
    assert run_cli(["--embeddings", str(tmp_path / "none.pkl"), "--query", str(query), "--output", str(tmp_path / "o"),
                    "--model", str(testpack_dir), "-q"]) == 0
    assert capsys.readouterr().out == "no faces in the embeddings files: nothing to search (matches.csv lists none)\n"
    assert list(csv.DictReader(open(tmp_path / "o" / "matches.csv", newline="", encoding="utf-8"))) == []


def test_a_folder_of_references_is_each_photo_in_it(lfw_subset, lfw, testpack_dir, tmp_path, capsys) -> None:
    emb, identity = lfw_subset
    refs = tmp_path / "ref" / "chretien"
    refs.mkdir(parents=True)
    for name in ("Jean_Chretien_0001.jpg", "Jean_Chretien_0002.jpg"):
        (refs / name).write_bytes((lfw / "Jean_Chretien" / name).read_bytes())
    (refs / "notes.txt").write_text("where these came from")  # not an image: not a query
    out = tmp_path / "found"
    assert run_cli(["--embeddings", str(emb), "--query", str(refs), "--output", str(out),
                    "--model", str(testpack_dir), "-q"]) == 0
    assert "searched with 2 queries" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "matches.csv", newline="", encoding="utf-8")))
    assert len(rows) >= 10 and np.mean([identity[r["path"]] == "Jean_Chretien" for r in rows]) >= 0.95
    (tmp_path / "empty").mkdir()
    assert run_cli(["--embeddings", str(emb), "--query", str(tmp_path / "empty"), "--output", str(tmp_path / "o"),
                    "--model", str(testpack_dir), "-q"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"Error: query folder {tmp_path / 'empty'} holds no images"


def test_a_large_folder_of_references_is_sampled_and_its_sheet_stays_small(lfw_subset, lfw, testpack_dir, tmp_path,
                                                                           monkeypatch, capsys) -> None:
    # A person folder of 300,000 crops as --query: a spread of them is enough, and the contact
    # sheet shows a few references before the matches, not every one.
    from face_organizer import search_stage

    monkeypatch.setattr(search_stage, "FOLDER_REFERENCES", 4)
    monkeypatch.setattr(search_stage, "SHOWN_REFERENCES", 2)
    emb, identity = lfw_subset
    refs = tmp_path / "person_A"
    names = sorted(p.name for p in (lfw / "Jean_Chretien").iterdir())[:10]
    for name in names:
        (refs / name).parent.mkdir(exist_ok=True)
        (refs / name).write_bytes((lfw / "Jean_Chretien" / name).read_bytes())
    out = tmp_path / "found"
    assert run_cli(["--embeddings", str(emb), "--query", str(refs), "--output", str(out), "--model", str(testpack_dir),
                    "--no-expand"]) == 0
    printed = capsys.readouterr()
    assert f"query folder {refs} holds 10 images; searching with 4 of them, spread evenly over it" in printed.err
    assert "searched with 4 queries" in printed.out
    rows = list(csv.DictReader(open(out / "matches.csv", newline="", encoding="utf-8")))
    assert len(rows) >= 10 and np.mean([identity[r["path"]] == "Jean_Chretien" for r in rows]) >= 0.95
    chosen = [names[i] for i in (0, 2, 5, 7)]
    assert f"the first 2 tiles are the 2 of the 4 references ({chosen[0]}, {chosen[1]}), then" in \
        (out / "index.html").read_text()
    sheet = read_image(out / "previews" / "matches.jpg")
    best = preview._tile(preview.SheetFace(rows[0]["destination"], None, ""))  # the third tile, after 2 references
    assert np.abs(sheet[:preview.TILE, 2 * preview.TILE:3 * preview.TILE].astype(int) - best).mean() < 4


def test_another_search_into_the_same_output_is_refused_before_the_models_load(lfw_subset, lfw, testpack_dir,
                                                                                tmp_path, monkeypatch, capsys) -> None:
    emb, _ = lfw_subset
    out = tmp_path / "found"
    her, again = (lfw / "Jean_Chretien" / f"Jean_Chretien_000{i}.jpg" for i in (1, 3))
    base = ["--embeddings", str(emb), "--output", str(out), "--model", str(testpack_dir), "-q", "--no-previews"]
    assert run_cli([*base, "--query", str(her), str(again)]) == 0
    assert run_cli([*base, "--query", str(again), str(her)]) == 0  # the same search again: nothing placed twice
    read: list[str] = []
    monkeypatch.setattr("face_organizer.search_stage.embed_reference", lambda path, models: read.append(path))
    monkeypatch.setattr("face_organizer.cli.search.load_face_models", lambda *a, **k: read.append("models"))
    other = lfw / "Jean_Chretien" / "Jean_Chretien_0002.jpg"
    assert run_cli([*base, "--query", str(other)]) == 2
    assert (f"--output {out} holds the output of another search_faces run, made with other settings (queries {her}, "
            f"{again}, now {other}): choose a new --output, or remove it to start over") in capsys.readouterr().err
    # A loop over year folders into one output: each year's embeddings file needs an output of its own.
    ef = embfile.load(emb)
    images = len(set(ef.rows.paths))
    ef.rows = ef.rows.select(np.arange(20))
    embfile.save(tmp_path / "2019.pkl", ef)
    assert run_cli(["--embeddings", str(tmp_path / "2019.pkl"), *base[2:], "--query", str(her), str(again)]) == 2
    assert (f"holds the output of another search_faces run, of other images ({images} images, now 20 images): give "
            "each embeddings file its own --output (in a loop over year folders: one per year), or remove it to start "
            "over") in capsys.readouterr().err
    assert read == []


def test_calibration_is_stored_and_used(shared, testpack_dir, lfw_subset, lfw, tmp_path, monkeypatch, capsys) -> None:
    store = tmp_path / "calibration.json"
    monkeypatch.setenv("FACE_ORGANIZER_CALIBRATION", str(store))
    folder = shared / "datasets" / "deepface_tests"
    assert run_cli(["--calibrate", str(folder), "--model", str(testpack_dir), "-q"]) == 0
    entry = json.loads(store.read_text())["MobileFaceNet.onnx"]
    assert 0.0 < entry["pair_threshold"] < 1.0 and entry["identities"] == 13
    assert entry["pair_true_match_rate"] > 0.5
    assert 0.0 <= entry["pair_impostor_centre"] < 0.2 and 0.05 < entry["pair_impostor_spread"] < 0.2  # for the graph
    capsys.readouterr()
    emb, _ = lfw_subset
    assert run_cli(["--embeddings", str(emb), "--query", str(lfw / "Jean_Chretien" / "Jean_Chretien_0001.jpg"),
                    "--output", str(tmp_path / "o"), "--model", str(testpack_dir), "-q"]) == 0
    assert f"similarity threshold {entry['pair_threshold']:.3f} (calibration)" in capsys.readouterr().out


def test_a_calibration_dry_run_prints_it_and_stores_nothing(shared, testpack_dir, tmp_path, monkeypatch,
                                                             capsys) -> None:
    # --dry-run was passed over with --calibrate: the calibration was stored all the same.
    store = tmp_path / "calibration.json"
    monkeypatch.setenv("FACE_ORGANIZER_CALIBRATION", str(store))
    folder = shared / "datasets" / "deepface_tests"
    assert run_cli(["--calibrate", str(folder), "--model", str(testpack_dir), "--dry-run", "-q"]) == 0
    out = capsys.readouterr().out
    printed = json.loads(out[: out.rindex("}") + 1])
    assert printed["identities"] == 13 and 0.0 < printed["pair_threshold"] < 1.0
    assert out.endswith(f"dry run: not stored (the command without --dry-run stores it for MobileFaceNet.onnx in "
                        f"{store})\n")
    assert not store.exists()


@pytest.mark.parametrize(("given", "message"), [
    (["--calibrate", "labelled", "--embeddings", "e.pkl", "--output", "o", "--no-expand"], "--embeddings, --output and "
     "--no-expand are for a search, and --calibrate only stores the model's cut-offs: calibrate first, then search in "
     "a command of its own"),
    (["--calibrate", "labelled", "--link-mode", "hardlink"], "--link-mode is for a search, and --calibrate only"),
    (["--embeddings", "e.pkl", "--query", "q.jpg", "--output", "o", "--target-fmr", "1e-5"], "--target-fmr is for "
     "--calibrate: a search's threshold is --threshold"),
])
def test_options_of_the_other_task_are_refused_before_any_work(given, message, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as usage:
        search_main(given)
    assert usage.value.code == 2 and f"search_faces.py: error: {message}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_tensorrt_on_the_cpu_is_refused_before_any_work(tmp_path, capsys) -> None:
    for task in (["--embeddings", "e.pkl", "--query", "q.jpg", "--output", "o"], ["--calibrate", "labelled"]):
        assert run_cli([*task, "--device", "cpu", "--tensorrt"]) == 2
        assert capsys.readouterr().err.startswith("Error: --tensorrt is ONNX Runtime's provider for NVIDIA GPUs, and "
                                                  "--device cpu runs on the CPU: leave one of them out")


def test_calibrating_a_missing_folder_is_one_line(testpack_dir, tmp_path, capsys) -> None:
    assert run_cli(["--calibrate", str(tmp_path / "nope"), "--model", str(testpack_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("Error: cannot calibrate: input folder not found") and "Traceback" not in "".join(err)


def test_a_calibration_store_that_cannot_be_written_is_refused_before_any_work(shared, testpack_dir, tmp_path,
                                                                                 monkeypatch, capsys) -> None:
    # The store was written after every image was embedded: the minutes of work were lost, and the error named
    # a temporary file.
    blocker = tmp_path / "a file"
    blocker.write_text("")
    store = blocker / "calibration.json"
    monkeypatch.setenv("FACE_ORGANIZER_CALIBRATION", str(store))
    embedded = []
    monkeypatch.setattr("face_organizer.cli.search.calibrate_folder", lambda *a, **k: embedded.append(a) or {})
    assert run_cli(["--calibrate", str(shared / "datasets" / "deepface_tests"), "--model", str(testpack_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"Error: cannot store the calibration in {store}: File exists; set $FACE_ORGANIZER_CALIBRATION "
                       "to a file in a folder you can write")
    assert embedded == [] and not any(".tmp" in line for line in err)


def test_a_calibration_file_that_cannot_be_read_is_neither_replaced_nor_passed_over_in_silence(
        shared, testpack_dir, lfw_subset, lfw, tmp_path, monkeypatch, capsys) -> None:
    # A hand edit gone wrong: the next --calibrate replaced the file (and every other model's entry in it), and
    # searches derived their cut-off from the data without a word.
    store = tmp_path / "calibration.json"
    monkeypatch.setenv("FACE_ORGANIZER_CALIBRATION", str(store))
    embedded = []
    monkeypatch.setattr("face_organizer.cli.search.calibrate_folder", lambda *a, **k: embedded.append(a) or {})
    emb, _ = lfw_subset
    search = ["--embeddings", str(emb), "--query", str(lfw / "Jean_Chretien" / "Jean_Chretien_0001.jpg"), "--model",
              str(testpack_dir), "-q"]
    for broken in ('{"w600k_r50.onnx": {"pair_threshold": 0.3},}', "[]"):
        store.write_text(broken)
        assert run_cli(["--calibrate", str(shared / "datasets" / "deepface_tests"), "--model", str(testpack_dir)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"Error: the calibration file {store} is not ")
        assert err[-1].endswith("; it is left as it is: mend it or move it away (or set $FACE_ORGANIZER_CALIBRATION "
                                "to another file)")
        assert store.read_text() == broken and embedded == []  # refused before any embedding
        assert run_cli([*search, "--output", str(tmp_path / f"o{len(broken)}")]) == 0
        run = capsys.readouterr()
        assert f"the calibration file {store} is not " in run.err and "cut-offs are derived from the data" in run.err
        assert "(data: impostor peak of random pairs" in run.out


def test_a_small_face_of_a_group_photo_as_reference_is_embedded_as_photos_mode_embeds_it(lfw, lfw_labels, models,
                                                                                         tmp_path) -> None:
    """A reference group photo's small faces have their landmarks found again around each, as photos mode finds
    them in the collection: the same embeddings, so a face searched for matches its own photo at 1."""
    canvas = np.full((3024, 4032, 3), 128, np.uint8)
    for j, row in enumerate(lfw_labels[:6]):  # faces about 100 pixels wide, 16 as the detector sees them
        canvas[400 : 400 + 220, 200 + 600 * j : 420 + 600 * j] = cv2.resize(read_image(lfw / row["path"]), (220, 220),
                                                                            interpolation=cv2.INTER_AREA)
    group = tmp_path / "party.png"
    cv2.imwrite(str(group), canvas)
    reference = embed_reference(str(group), models)
    rows = embed_batch([(str(group), canvas)], models, EmbedOptions(mode="photos")).rows
    assert len(rows) == reference.faces_in_photo >= 6
    assert np.all((reference.faces @ rows.embeddings.T).max(axis=1) > 0.9999)
