"""Stage 1 end to end on real models and faces."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pytest

from face_organizer import __version__, embed_run, embfile, fsutil, images
from face_organizer.cli import common
from face_organizer.cli import embed as embed_cli
from face_organizer.cli.embed import main as embed_main
from face_organizer.embed_run import RunSummary, plan_streams, run_embeddings
from face_organizer.embfile import parts_dir
from face_organizer.errors import EmbeddingsFileError, RunStopped, SetupError, UnsafePickleError
from face_organizer.evaluation import d_prime, roc_auc
from face_organizer.detection import Detections
from face_organizer.faces import TURNS, EmbedOptions, FaceRows, ShrunkPhotos, embed_batch, find_crop_faces
from face_organizer.images import discover_images, read_image
from face_organizer.samples import insightface_sample

from conftest import (ROOT, child_processes, copies_of, interrupted_at, needs_proc, png_claiming, row_of_small_faces,
                      running, tree_of, wait_gone, write_image)


def run_cli(args: list[str]) -> int:
    return common.run(embed_main, args)


def test_same_person_more_similar_than_different(lfw, lfw_labels, models) -> None:
    rows = [r for r in lfw_labels if r["kind"] in ("big", "main")][::6][:150]
    items = [(r["path"], read_image(lfw / r["path"])) for r in rows]
    result = embed_batch(items, models, EmbedOptions())
    emb = result.rows.embeddings
    assert emb.shape == (len(rows), 128) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    ids = np.array([r["identity"] for r in rows])
    iu = np.triu_indices(len(ids), 1)
    sims, same = (emb @ emb.T)[iu], (ids[:, None] == ids[None])[iu]
    assert sims[same].mean() > sims[~same].mean() + 0.3
    assert roc_auc(sims, same) > 0.98


def test_frame_filling_crops_are_detected_and_aligned(video_crops, lfw, lfw_labels, models) -> None:
    paths = [p for crops in video_crops.values() for p in crops]
    assert len(paths) >= 30
    result = embed_batch([(str(p), read_image(p)) for p in paths], models, EmbedOptions())
    assert result.rows.detected.mean() >= 0.95
    # Without padding the detector misses most of these crops: the padding is what finds them.
    unpadded = embed_batch([(str(p), read_image(p)) for p in paths], models,
                           EmbedOptions(pad_ratio=0.0, crop_det_sizes=(640,), crop_threshold=0.5))
    assert unpadded.rows.detected.mean() < result.rows.detected.mean()
    # A crop's embedding matches its own person's photos better than the other people's.
    emb, names = result.rows.embeddings, [Path(p).parent.name for p in result.rows.paths]
    refs = {}
    for person in video_crops:
        photo = next(r for r in lfw_labels if r["identity"] == person and r["path"].endswith("_0020.jpg"))
        refs[person] = embed_batch([(person, read_image(lfw / photo["path"]))], models, EmbedOptions()).rows.embeddings[0]
    people = list(refs)
    best = [people[int(np.argmax([emb[i] @ refs[p] for p in people]))] for i in range(len(emb))]
    assert np.mean([b == n for b, n in zip(best, names)]) >= 0.95


def test_photos_mode_finds_six_faces_of_t1(models) -> None:
    path = insightface_sample("t1.jpg")
    result = embed_batch([(str(path), read_image(path))], models, EmbedOptions(mode="photos"))
    assert len(result.rows) == 6
    assert result.rows.face_index.tolist() == list(range(6))
    assert np.all(np.diff(result.rows.bbox[:, 0]) >= 0)
    assert np.all(result.rows.det_score > 0.5)


def test_photos_cropped_to_the_face_are_found_and_non_faces_are_not(utkface, models) -> None:
    import skimage.data

    portraits = sorted(str(p) for p in utkface.rglob("*.jpg"))[:40]  # 200x200, the face filling the frame
    result = embed_batch([(p, read_image(p)) for p in portraits], models, EmbedOptions(mode="photos"))
    assert result.no_face == [] and result.rows.paths == portraits
    unpadded = embed_batch([(p, read_image(p)) for p in portraits], models, EmbedOptions(mode="photos", photo_retry_size=0))
    assert len(unpadded.no_face) == len(portraits)  # what the retry is for
    as_crops = embed_batch([(p, read_image(p)) for p in portraits], models, EmbedOptions(mode="crops"))
    assert np.median(np.sum(result.rows.embeddings * as_crops.rows.embeddings, axis=1)) > 0.95
    pictures = {name: getattr(skimage.data, name)() for name in ("coffee", "rocket", "chelsea", "horse", "coins",
                                                                  "brick")}
    scenes = [(name, cv2.cvtColor(np.uint8(img) * (255 if img.dtype == bool else 1),
                                  cv2.COLOR_GRAY2BGR if img.ndim == 2 else cv2.COLOR_RGB2BGR))
              for name, img in pictures.items()]
    assert embed_batch(scenes, models, EmbedOptions(mode="photos")).no_face == [name for name, _ in scenes]


def test_photos_without_a_face_upright_are_tried_turned_with_turn_faceless(tmp_path, lfw, models, testpack_dir,
                                                                          capsys) -> None:
    """Prints scanned sideways: in some, no face at all is found upright, so they were not tried turned. With
    --turn-faceless they are, and a re-run with it over a file made without it tries only the photos without
    a face; photos that hold no face (a landscape, a document) stay without one."""
    from skimage import data

    folder = tmp_path / "scans"
    folder.mkdir()
    upright = {}
    for number in ("0008", "0018", "0060", "0001"):
        photo = read_image(lfw / "Tony_Blair" / f"Tony_Blair_{number}.jpg")
        upright[number] = embed_batch([(number, photo)], models, EmbedOptions(mode="photos")).rows
        cv2.imwrite(str(folder / f"scan_{number}.png"), photo if number == "0001" else cv2.rotate(photo, TURNS[0]))
    cv2.imwrite(str(folder / "coffee.png"), cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "page.png"), data.page())
    sideways = [str(folder / f"scan_{n}.png") for n in ("0008", "0018", "0060")]
    faceless = sideways + [str(folder / "coffee.png"), str(folder / "page.png")]
    command = ["--input", str(folder), "--output", str(tmp_path / "emb.pkl"), "--model", str(testpack_dir),
               "--mode", "photos", "-q"]
    assert run_cli(command) == 0
    assert sorted(embfile.load(tmp_path / "emb.pkl").no_face) == sorted(faceless)  # as before: not tried turned
    assert ("photos without a face: 5\n  a print scanned sideways may show no face upright: --turn-faceless tries "
            "such photos turned by 90, 180 and 270 degrees (a re-run with it tries only these)\n"
            ) in capsys.readouterr().out
    assert run_cli([*command, "--turn-faceless", "--dry-run"]) == 0
    assert ("to embed: 5 images (new: 0; changed since embedded: 0; failed before, tried again: 0; without a face "
            "before, tried turned: 5)") in capsys.readouterr().out
    assert run_cli([*command, "--turn-faceless"]) == 0
    printed = capsys.readouterr().out
    assert "images found: 6; already embedded: 1; without a face before, so tried turned now: 5" in printed
    assert "embedded now: 3 images, 3 faces; photos without a face: 2\nskipped: 0" in printed  # no hint: tried
    ef = embfile.load(tmp_path / "emb.pkl")
    assert sorted(ef.no_face) == [str(folder / "coffee.png"), str(folder / "page.png")]
    assert ef.meta["photo_turn_faceless"] is True
    from face_organizer.embinfo import describe

    assert ", photos without a face upright tried turned (--turn-faceless)" in describe(tmp_path / "emb.pkl").lines()[1]
    for path in sideways:  # each embedded as the same photo upright
        rows = ef.rows.select(np.asarray([i for i, p in enumerate(ef.rows.paths) if p == path], np.intp))
        assert len(rows) == 1 and float(rows.embeddings[0] @ upright[Path(path).stem[5:]].embeddings[0]) > 0.9
    assert run_cli([*command, "--turn-faceless"]) == 0  # all tried turned already: nothing to do, no model loaded
    assert "nothing new, so it was left as it was" in capsys.readouterr().out
    assert run_cli([*command[:-3], "--turn-faceless", "-q"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == ("Error: --turn-faceless is for --mode photos: a crop "
                                                                "without a face found is embedded centred")
    # The scans' folder renamed since it was embedded without the option, and embedded with it at its new place:
    # a photo without a face is no image to copy "no face" from, as it was not tried turned.
    other = ["--output", str(tmp_path / "renamed.pkl"), *command[4:]]
    assert run_cli(["--input", str(folder), *other]) == 0
    folder.rename(tmp_path / "renamed")
    capsys.readouterr()
    assert run_cli(["--input", str(tmp_path / "renamed"), *other, "--turn-faceless"]) == 0
    printed = capsys.readouterr().out
    assert "embedded now: 4 images, 5 faces; photos without a face: 2\n" in printed  # the 3 turned found
    assert "instead of being embedded again: 1\n" in printed  # the upright photo alone copied
    ef = embfile.load(tmp_path / "renamed.pkl")
    assert {Path(p).parent.name for p in [*ef.rows.paths, *ef.no_face]} == {"renamed"}


def test_turn_faceless_over_one_year_folder_leaves_the_others_to_a_run_over_theirs(tmp_path, lfw, testpack_dir,
                                                                                   capsys) -> None:
    """A file of two year folders made without --turn-faceless, and a loop with it over one folder at a time: each
    run tries the photos without a face of its own folder turned. The first run recorded the option for the whole
    file, so the second found none to try, and the other folder's sideways scans stayed without a face."""
    from skimage import data

    from face_organizer.embinfo import describe
    from face_organizer.rebase import rebase

    years = {year: tmp_path / "scans" / year for year in ("2017", "2018")}
    for (year, folder), number, other in zip(years.items(), ("0008", "0018"), (data.coffee(), data.page())):
        folder.mkdir(parents=True)
        photo = read_image(lfw / "Tony_Blair" / f"Tony_Blair_{number}.jpg")
        cv2.imwrite(str(folder / f"scan_{number}.png"), cv2.rotate(photo, TURNS[0]))
        cv2.imwrite(str(folder / "other.png"), other[..., ::-1] if other.ndim == 3 else other)
    emb = tmp_path / "emb.pkl"
    command = ["--output", str(emb), "--model", str(testpack_dir), "--mode", "photos", "-q"]
    assert run_cli(["--input", *map(str, years.values()), *command]) == 0
    assert len(embfile.load(emb).no_face) == 4
    capsys.readouterr()
    assert run_cli(["--input", str(years["2018"]), *command, "--turn-faceless"]) == 0
    printed = capsys.readouterr().out
    assert "without a face before, so tried turned now: 2" in printed
    assert ("photos without a face from a run without --turn-faceless, not under the inputs now: 2; not tried turned "
            "(a run with it over their folders tries them)") in printed
    ef = embfile.load(emb)
    left = [str(years["2017"] / "other.png"), str(years["2017"] / "scan_0008.png")]
    assert ef.meta[embfile.UNTRIED_KEY] == left
    assert sorted(ef.no_face) == [*left, str(years["2018"] / "other.png")]
    assert ("--turn-faceless; 2 photos without a face from a run without it not tried turned, not under its inputs)"
            in describe(emb).lines()[1])
    moved = rebase(ef, str(tmp_path / "scans"), "/media/scans").file  # the list follows the photos
    assert moved.meta[embfile.UNTRIED_KEY] == ["/media/scans/2017/other.png", "/media/scans/2017/scan_0008.png"]
    assert run_cli(["--input", str(years["2017"]), *command, "--turn-faceless", "--dry-run"]) == 0
    assert "without a face before, tried turned: 2)" in capsys.readouterr().out
    assert run_cli(["--input", str(years["2017"]), *command, "--turn-faceless"]) == 0
    printed = capsys.readouterr().out
    assert "without a face before, so tried turned now: 2" in printed and "not under the inputs now" not in printed
    ef = embfile.load(emb)
    assert sorted(ef.no_face) == [str(years[year] / "other.png") for year in ("2017", "2018")]  # the scans found
    assert embfile.UNTRIED_KEY not in ef.meta
    assert run_cli(["--input", *map(str, years.values()), *command, "--turn-faceless"]) == 0
    assert "nothing new, so it was left as it was" in capsys.readouterr().out


def test_a_phone_photo_stored_sideways_finds_the_same_faces(tmp_path, models) -> None:
    from PIL import Image

    path = insightface_sample("t1.jpg")
    upright = embed_batch([(str(path), read_image(path))], models, EmbedOptions(mode="photos")).rows
    sideways = tmp_path / "IMG_0001.jpg"  # as a phone stores a portrait shot: pixels turned, EXIF says how
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(path).transpose(Image.Transpose.ROTATE_90).save(sideways, quality=95, exif=exif.tobytes())
    summary = run_embeddings([str(sideways)], tmp_path / "emb.pkl", models, EmbedOptions(mode="photos"), progress=False)
    rows = embfile.load(tmp_path / "emb.pkl").rows
    assert summary.faces == len(rows) == 6
    np.testing.assert_allclose(rows.bbox, upright.bbox, atol=4)  # boxes in the upright picture's pixels
    assert np.all(np.sum(rows.embeddings * upright.embeddings, axis=1) > 0.9)


def test_photos_lying_on_their_side_or_upside_down_without_an_orientation_tag_are_turned(tmp_path, lfw, lfw_labels,
                                                                                       models) -> None:
    """A portrait shot of a camera without an orientation sensor is stored sideways with no EXIF tag. Its face
    was often found, at a low score, with landmarks that do not fit it, and embedded as noise (cosine about 0
    to the same photo upright). A photo whose best face scores low is now tried turned, and its faces are
    embedded as upright, with boxes in the pixels of the photo as stored; upright photos are left as they were."""
    photos = [(r["path"], read_image(lfw / r["path"])) for r in lfw_labels[:16]]
    upright = embed_batch(photos, models, EmbedOptions(mode="photos")).rows
    assert np.array_equal(upright.embeddings, embed_batch(photos, models, EmbedOptions(
        mode="photos", photo_upright_score=0)).rows.embeddings)  # none of these was tried turned

    def largest(rows: FaceRows) -> dict[str, int]:
        widths = rows.bbox[:, 2] - rows.bbox[:, 0]
        return {p: i for i in np.argsort(widths) for p in [rows.paths[i]]}  # the widest last

    own = largest(upright)
    for turn in (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE):
        turned = [(path, cv2.rotate(image, turn)) for path, image in photos]
        cosines = {}
        for score in (0.7, 0.0):  # as by default, and never tried turned (as before)
            rows = embed_batch(turned, models, EmbedOptions(mode="photos", photo_upright_score=score)).rows
            faces = largest(rows)
            cosines[score] = np.array([upright.embeddings[own[p]] @ rows.embeddings[i] for p, i in faces.items()])
            if score:  # the box is around the face in the photo as stored
                for path, i in faces.items():
                    mark = np.zeros(photos[0][1].shape[:2], np.uint8)
                    x1, y1, x2, y2 = upright.bbox[own[path]].astype(int)
                    mark[max(y1, 0) : y2, max(x1, 0) : x2] = 1
                    ys, xs = np.nonzero(cv2.rotate(mark, turn))
                    centre = (rows.bbox[i, :2] + rows.bbox[i, 2:]) / 2
                    np.testing.assert_allclose(centre, [(xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2],
                                               atol=0.1 * (x2 - x1))
        assert np.mean(cosines[0.7] > 0.9) >= 0.8 and np.mean(cosines[0.0] > 0.9) <= 0.2, turn
    point = np.zeros((7, 11), np.uint8)  # a pixel at x 9, y 2, and a landmark and a box on it, turned back
    point[2, 9] = 1
    for turn in TURNS:
        y, x = np.argwhere(cv2.rotate(point, turn))[0]
        on_it = Detections(np.array([[x, y, x + 1, y + 1]], np.float32), np.ones(1, np.float32),
                           np.full((1, 5, 2), [x, y], np.float32)).turned_back(turn, point.shape)
        assert on_it.kps[0, 0].tolist() == [9, 2] and on_it.boxes[0].tolist() == [9, 2, 10, 3]


def test_large_jpeg_photos_are_decoded_shrunk_and_give_the_faces_of_the_whole_photo(tmp_path, models, testpack_dir,
                                                                                    capsys) -> None:
    """A 12-megapixel phone photo is decoded at half size (several times faster), also stored sideways: the same
    six faces, boxes in the file's own pixels, embeddings at cosine > 0.95 to those of the photo decoded whole."""
    from PIL import Image

    group = Image.open(insightface_sample("t1.jpg"))
    big = group.resize((4032, round(4032 * group.height / group.width)), Image.Resampling.LANCZOS)
    folder = tmp_path / "DCIM"
    folder.mkdir()
    big.save(folder / "IMG_0001.jpg", quality=92)
    exif = Image.Exif()
    exif[0x0112] = 6
    big.transpose(Image.Transpose.ROTATE_90).save(folder / "IMG_0002.jpg", quality=92, exif=exif.tobytes())
    paths = [str(folder / "IMG_0001.jpg"), str(folder / "IMG_0002.jpg")]
    assert [images.load(p, 2000).reduction for p in paths] == [2, 2]
    assert images.load(paths[1], 2000).image.shape[:2] == (-(-big.height // 2), 2016)  # upright, at half size
    assert run_embeddings(paths, tmp_path / "shrunk.pkl", models, EmbedOptions(mode="photos"),
                          progress=False).at_the_limit == 0  # faces of 300 pixels and more: none at the limit
    whole_run = ["--input", str(folder), "--output", str(tmp_path / "whole.pkl"), "--model", str(testpack_dir)]
    assert common.run(embed_main, [*whole_run, "--full-resolution"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == ("Error: --full-resolution is for --mode photos: crops "
                                                                "are always decoded whole")
    assert common.run(embed_main, [*whole_run, "--mode", "photos", "--full-resolution", "-q"]) == 0
    shrunk, whole = embfile.load(tmp_path / "shrunk.pkl"), embfile.load(tmp_path / "whole.pkl")
    assert shrunk.rows.paths == whole.rows.paths == [paths[0]] * 6 + [paths[1]] * 6
    assert shrunk.meta["photo_min_side"] == 2000 and whole.meta["photo_min_side"] == 0
    assert shrunk.meta["photo_refine_below"] == whole.meta["photo_refine_below"] == 64
    from face_organizer.embinfo import describe

    described = describe(tmp_path / "shrunk.pkl").lines()[1]
    assert "photos mode (large JPEGs decoded shrunk to 2,000 pixels or more, again for faces under 112 pixels), " \
        in described
    assert "photos mode (JPEGs decoded whole), " in describe(tmp_path / "whole.pkl").lines()[1]
    width = whole.rows.bbox[:, 2] - whole.rows.bbox[:, 0]
    assert width.min() > 300  # faces of the whole photo's size, ...
    assert np.all(np.abs(shrunk.rows.bbox - whole.rows.bbox).max(axis=1) < 0.05 * width)  # ... where they are in it
    assert np.all(np.sum(shrunk.rows.embeddings * whole.rows.embeddings, axis=1) > 0.95)


SLOT = 166  # of _group_of_small_faces: LFW photos at 150 pixels, faces about 65 pixels wide, 10 as the detector sees


def _group_of_small_faces(lfw: Path, lfw_labels: list[dict[str, str]]) -> tuple[np.ndarray, list[dict[str, str]]]:
    """A 12-megapixel group photo of 48 LFW dev photos, four of each of 12 people, and their rows, in slot order."""
    people = sorted({r["identity"] for r in lfw_labels if r["kind"] != "single"})[:12]
    rows = [r for person in people for r in [r for r in lfw_labels if r["identity"] == person][:4]]
    canvas = np.full((3024, 4032, 3), 128, np.uint8)
    for j, row in enumerate(rows):
        y, x = (j // 24) * SLOT + 8, (j % 24) * SLOT + 8
        canvas[y : y + 150, x : x + 150] = cv2.resize(read_image(lfw / row["path"]), (150, 150),
                                                      interpolation=cv2.INTER_AREA)
    return canvas, rows


def _own_faces(found: FaceRows, rows: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """The embeddings of each slot's largest face (the LFW photo's own: some show others too), and whose they are."""
    centres = (found.bbox[:, :2] + found.bbox[:, 2:]) / 2
    slots = (centres[:, 1] // SLOT).astype(int) * 24 + (centres[:, 0] // SLOT).astype(int)
    widths = found.bbox[:, 2] - found.bbox[:, 0]
    own = {k: i for i in np.argsort(widths) for k in [int(slots[i])] if k < len(rows)}  # the widest last
    kept = sorted(own.values())
    return found.embeddings[kept], np.array([rows[int(slots[i])]["identity"] for i in kept])


def _same_and_different(found: FaceRows, rows: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Similarities of every pair of the slots' own faces, and whether the pair is one person."""
    x, who = _own_faces(found, rows)
    upper = np.triu_indices(len(who), 1)
    return (x @ x.T)[upper], (who[:, None] == who[None])[upper]


def test_small_faces_of_a_group_photo_are_aligned_on_landmarks_found_again_around_them(lfw, lfw_labels,
                                                                                         models) -> None:
    """At 640 pixels a face of a 12-megapixel group photo is about ten pixels wide, and its landmarks too coarse to
    align it: the same person's faces were barely more alike than strangers'. Found again in a crop around each
    face, as crops are, they are told apart as in crops mode. Boxes, scores and the faces found do not change,
    and large faces are left as they were."""
    canvas, rows = _group_of_small_faces(lfw, lfw_labels)
    group = [("group.jpg", canvas)]
    refined = embed_batch(group, models, EmbedOptions(mode="photos")).rows
    coarse = embed_batch(group, models, EmbedOptions(mode="photos", photo_refine_below=0)).rows
    np.testing.assert_array_equal(refined.bbox, coarse.bbox)
    np.testing.assert_array_equal(refined.det_score, coarse.det_score)
    separation = [roc_auc(*_same_and_different(found, rows)) for found in (refined, coarse)]
    assert separation[0] > 0.97 and separation[1] < separation[0] - 0.05
    photo = [("photo.jpg", read_image(lfw / rows[0]["path"]))]  # a face of about 280 pixels as the detector sees it
    as_found, unrefined = (embed_batch(photo, models, EmbedOptions(mode="photos", photo_refine_below=below)).rows
                           for below in (64, 0))
    np.testing.assert_array_equal(as_found.embeddings, unrefined.embeddings)


def _one_photo_each(lfw_labels: list[dict[str, str]], count: int) -> list[dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    for row in lfw_labels:
        rows.setdefault(row["identity"], row)
    return list(rows.values())[:count]


@pytest.mark.parametrize("layout", ["across", "upright", "sideways"])
def test_the_faces_of_a_panorama_are_found_in_tiles_as_in_photos_of_its_height(lfw, lfw_labels, models, monkeypatch,
                                                                                 layout) -> None:
    """Letterboxed whole into the detector's 640-pixel canvas, a strip of 24 LFW photos (6,100 x 250 pixels, each
    photo's face shrunk to about 10 pixels) showed 19 of the 24 faces at most, the rest embedded from coarse
    landmarks. Detected in square tiles of its height too, every face is found and embedded as in its photo alone,
    though the tiles do not line up with the photos. Stored sideways without an orientation tag, the strip is told
    turned from its tiles, though one face lying on its side scored as high as an upright face may (0.72): faces
    had been found lying on their side in 15 of its 24 places, embedded at cosine 0.35 on average to the photo
    alone, and in the rest none."""
    rows = _one_photo_each(lfw_labels, 24)
    photos = [read_image(lfw / row["path"]) for row in rows]
    alone = []
    for photo in photos:
        found = embed_batch([("photo.jpg", photo)], models, EmbedOptions(mode="photos")).rows
        centre = (found.bbox[:, :2] + found.bbox[:, 2:4]) / 2 - 125
        alone.append(found.embeddings[int(np.argmin((centre ** 2).sum(axis=1)))])
    margin = np.full((250, 100, 3), 90, np.uint8)  # so that no tile is one of the photos
    strip = np.hstack([margin, *photos])
    if layout == "upright":
        strip = np.ascontiguousarray(np.vstack([margin.transpose(1, 0, 2), *photos]))
    elif layout == "sideways":  # turned a quarter clockwise: the photos' places run down it, as for "upright"
        strip = cv2.rotate(strip, cv2.ROTATE_90_CLOCKWISE)

    def found_whole(rows_found: FaceRows) -> np.ndarray:
        """Each photo's best similarity to its face alone among the faces found in its place in the strip."""
        centre = (rows_found.bbox[:, 1] + rows_found.bbox[:, 3] if layout != "across"
                  else rows_found.bbox[:, 0] + rows_found.bbox[:, 2]) / 2
        place = ((centre - 100) // 250).astype(int)
        return np.array([max((float(rows_found.embeddings[j] @ alone[i]) for j in np.nonzero(place == i)[0]),
                             default=0.0) for i in range(len(photos))])

    tiled = found_whole(embed_batch([("strip.jpg", strip)], models, EmbedOptions(mode="photos")).rows)
    assert tiled.min() > 0.97, tiled
    import face_organizer.detection as detection

    monkeypatch.setattr(detection, "PANORAMA_RATIO", 1e9)  # letterboxed whole only, as before
    whole = found_whole(embed_batch([("strip.jpg", strip)], models, EmbedOptions(mode="photos")).rows)
    assert (whole > 0.97).sum() <= 19, whole


def test_a_face_only_the_whole_panorama_showed_takes_only_its_own_face_from_the_tile_around_it() -> None:
    from face_organizer.faces import _large_faces_again

    class Tile:  # a detector that finds in the tile around the large face what it is given, in the tile's pixels
        def __init__(self, *boxes: tuple[float, float, float, float]) -> None:
            self.boxes = np.array(boxes, np.float32).reshape(-1, 4)
            self.sizes: list[tuple[tuple[int, int], float]] = []

        def detect_many(self, images, size, threshold, pad_ratio=0.0):
            self.sizes.append((size, pad_ratio))
            kps = np.repeat(self.boxes[:, None, :2], 5, axis=1)
            return [Detections(self.boxes, np.full(len(self.boxes), 0.9, np.float32), kps) for _ in images]

    photo = np.zeros((100, 400, 3), np.uint8)
    # A small face a tile found, and a large face only the whole photo showed, coarsely, around it.
    boxes = np.array([[150, 40, 170, 60], [128, 8, 212, 96]], np.float32)
    for tile_finds, taken in (((30, 40, 50, 60),), False), (((10, 5, 94, 95), (30, 40, 50, 60)), True):
        found = [Detections(boxes.copy(), np.array([0.8, 0.6], np.float32), np.zeros((2, 5, 2), np.float32))]
        whole_only = {0: np.array([False, True])}
        detector = Tile(*tile_finds)
        _large_faces_again([photo], found, whole_only, detector, EmbedOptions(mode="photos"))  # type: ignore[arg-type]
        assert detector.sizes == [((320, 320), 0.3)]  # the tile around it (x 120-220), padded as photos are retried
        assert found[0].boxes[0].tolist() == [150, 40, 170, 60]
        assert found[0].boxes[1].tolist() == ([130, 5, 214, 95] if taken else [128, 8, 212, 96])
        assert whole_only[0].tolist() == [False, not taken]


def test_a_face_taller_than_half_a_panorama_is_embedded_as_in_its_photo_alone(lfw, lfw_labels, models) -> None:
    """A face more than half as tall as a panorama fits whole in none of its tiles, so it came from the whole photo's
    detection, where a 4,100-pixel strip shrinks it to about 25 pixels: aligned on those landmarks, the faces of 16
    close-ups side by side were embedded at cosine 0.78 to their photo alone at worst. Detected again in a tile
    centred on it (padded, as a face filling a photo is not found unpadded), each is embedded as in its photo."""
    photos, alone = [], []
    for row in _one_photo_each(lfw_labels, 40):
        photo = cv2.resize(read_image(lfw / row["path"])[40:210, 40:210], (250, 250), interpolation=cv2.INTER_CUBIC)
        found = embed_batch([("photo.jpg", photo)], models, EmbedOptions(mode="photos")).rows
        nearest = int(np.argmin((((found.bbox[:, :2] + found.bbox[:, 2:4]) / 2 - 125) ** 2).sum(axis=1)))
        if found.bbox[nearest, 2] - found.bbox[nearest, 0] > 125:  # wider than half the strip's height
            photos.append(photo)
            alone.append(found.embeddings[nearest])
    photos, alone = photos[:16], alone[:16]
    assert len(photos) == 16
    strip = np.hstack([np.full((250, 100, 3), 90, np.uint8), *photos])

    def as_alone(options: EmbedOptions) -> np.ndarray:
        rows_found = embed_batch([("strip.jpg", strip)], models, options).rows
        place = ((rows_found.bbox[:, 0] + rows_found.bbox[:, 2]) / 2 - 100) // 250
        return np.array([max((float(rows_found.embeddings[j] @ alone[i]) for j in np.flatnonzero(place == i)),
                             default=0.0) for i in range(len(photos))])

    best = as_alone(EmbedOptions(mode="photos"))
    assert best.min() > 0.97, best
    # Not detected again (no padded retry): such a face has its landmarks found again around it as a small face
    # has, being small as the detector saw the whole photo.
    refined = as_alone(EmbedOptions(mode="photos", photo_retry_size=0))
    assert refined.min() > 0.9, refined


def test_a_tile_leaves_out_the_faces_its_inner_edges_cut_and_a_face_found_twice_is_kept_as_its_tile_saw_it() -> None:
    from face_organizer.detection import in_tile, merged, panorama_tiles

    assert panorama_tiles((1000, 2400)) == []  # not elongated enough: 2.4 to 1
    assert panorama_tiles((100, 400)) == [(0, 0, 100, 100), (50, 0, 150, 100), (100, 0, 200, 100),
                                          (150, 0, 250, 100), (200, 0, 300, 100), (250, 0, 350, 100),
                                          (300, 0, 400, 100)]
    assert panorama_tiles((430, 100))[-1] == (0, 330, 100, 430)  # upright: down its height, the last at its end
    # A banner 12 pixels high took 499 tiles (19 s for no face), and one 2 pixels high 1,999 (a minute).
    assert panorama_tiles((12, 3000)) == [] and panorama_tiles((63, 1000)) == []
    assert len(panorama_tiles((64, 8224))) == 256 and panorama_tiles((64, 8225)) == []

    def dets(*boxes: tuple[float, float, float, float]) -> Detections:
        b = np.array(boxes, np.float32)
        return Detections(b, np.linspace(0.9, 0.8, len(b)).astype(np.float32), np.repeat(b[:, None, :2], 5, axis=1))

    found = dets((0.5, 10, 30, 40), (40, 10, 70, 40), (80, 10, 99.5, 40))
    # The first tile cuts nothing at the photo's own left edge; its right edge lies inside the photo.
    assert in_tile(found, (0, 0, 100, 100), (100, 400)).boxes[:, 0].tolist() == [0.5, 40]
    middle = in_tile(found, (100, 0, 200, 100), (100, 400))
    assert middle.boxes[:, 0].tolist() == [140] and middle.kps[0, 0].tolist() == [140, 10]
    assert in_tile(found, (300, 0, 400, 100), (100, 400)).boxes[:, 0].tolist() == [340, 380]
    whole = Detections(np.array([[139, 9, 171, 41], [10, 10, 90, 90]], np.float32), np.array([0.99, 0.7], np.float32),
                       np.zeros((2, 5, 2), np.float32))
    both, whole_only = merged(whole, [middle, dets((141, 10, 170, 40))])
    # The face found by the whole photo (score 0.99) and by two tiles (0.85, 0.9) is kept once, as the tile that
    # scored it highest saw it; the large face that no tile found whole is the whole photo's.
    assert both.boxes.tolist() == [[141, 10, 170, 40], [10, 10, 90, 90]] and both.scores.tolist() == \
        pytest.approx([0.9, 0.7])
    assert whole_only.tolist() == [False, True]


def test_small_faces_of_a_large_jpeg_are_aligned_from_the_photo_decoded_again(tmp_path, lfw, lfw_labels,
                                                                              models) -> None:
    """A 12-megapixel JPEG is decoded at half size, where its small faces (65 pixels wide in the file) are 32
    pixels: aligned from there to the recogniser's 112, they lose what the file holds. Aligned from the photo
    decoded again whole they embed as with --full-resolution, and the same person's faces are told apart as
    there. The faces, boxes and scores are those of the half-size decoding."""
    canvas, rows = _group_of_small_faces(lfw, lfw_labels)
    path = tmp_path / "group.jpg"
    cv2.imwrite(str(path), canvas, [cv2.IMWRITE_JPEG_QUALITY, 92])
    ways = {"default": EmbedOptions(mode="photos"), "shrunk": EmbedOptions(mode="photos", photo_face_pixels=0),
            "whole": EmbedOptions(mode="photos", photo_min_side=0)}
    found, summaries = {}, {}
    for name, options in ways.items():
        summaries[name] = run_embeddings([str(path)], tmp_path / f"{name}.pkl", models, options, progress=False)
        found[name] = embfile.load(tmp_path / f"{name}.pkl")
    # Faces 10 pixels wide as the detector saw the photo: the summary says it may hold smaller ones it missed.
    assert summaries["default"].at_the_limit == 1
    assert "photos with a face at the smallest size the detector finds (under 16 pixels as it saw the photo): 1; " \
        "they may hold smaller faces it missed, which --det-size 1280 finds" in "\n".join(summaries["default"].lines())
    default, shrunk, whole = (found[name].rows for name in ways)
    assert found["default"].meta["photo_face_pixels"] == 112 and found["default"].meta["photo_min_side"] == 2000
    assert found["default"].meta["photo_upright_score"] == 0.7
    assert len(default) == len(whole) >= 30
    np.testing.assert_array_equal(default.bbox, shrunk.bbox)
    np.testing.assert_array_equal(default.det_score, shrunk.det_score)
    to_whole = [np.median(np.sum(rows_.embeddings * whole.embeddings, axis=1)) for rows_ in (default, shrunk)]
    assert to_whole[0] > 0.97 and to_whole[1] < 0.93
    apart = {name: d_prime(*_same_and_different(found[name].rows, rows)) for name in ways}
    assert apart["default"] > apart["shrunk"] + 1 and apart["default"] > apart["whole"] - 0.5
    # Decoded in a worker process, which hands the stream the photo's digest for the second decoding: the same.
    run_embeddings([str(path)], tmp_path / "worker.pkl", models, ways["default"], workers=1, progress=False)
    np.testing.assert_array_equal(embfile.load(tmp_path / "worker.pkl").rows.embeddings, default.embeddings)


def test_det_size_finds_the_small_faces_of_large_group_photos_and_a_rerun_says_it_reaches_only_new_images(
        tmp_path, lfw, lfw_labels, testpack_dir, models, capsys) -> None:
    """At 640 pixels a face 60 pixels wide in a 12-megapixel photo is 10 as the detector sees it, and it is
    not found; --det-size 1280 finds them. A re-run with another size says that it reaches only new images."""
    folder = tmp_path / "DCIM"
    photos = [r for r in lfw_labels if r["kind"] != "single"][:20]
    for n in range(2):
        row_of_small_faces(lfw, photos[n * 10 : n * 10 + 10], folder / f"IMG_{n:04d}.jpg")
    found = {}
    for size in (640, 1280):
        out = tmp_path / f"at{size}.pkl"
        assert common.run(embed_main, ["--input", str(folder), "--output", str(out), "--model", str(testpack_dir),
                                       "--mode", "photos", "--det-size", str(size), "-q"]) == 0
        found[size] = embfile.load(out)
    assert len(found[640].rows) <= 4 and len(found[1280].rows) >= 18
    assert found[1280].meta["photo_det_size"] == 1280 and found[640].meta["photo_det_size"] == 640
    assert found[1280].meta["photo_min_side"] == 2000
    from face_organizer.embinfo import describe

    assert "photos mode (detected at 1,280 pixels, large JPEGs decoded shrunk to 2,000 pixels" in \
        describe(tmp_path / "at1280.pkl").lines()[1]
    assert "photos mode (large JPEGs decoded shrunk" in describe(tmp_path / "at640.pkl").lines()[1]
    capsys.readouterr()
    again = ["--input", str(folder), "--output", str(tmp_path / "at640.pkl"), "--model", str(testpack_dir),
             "--mode", "photos", "--det-size", "1280"]
    assert common.run(embed_main, again) == 0  # nothing new: the file is left as it was, with a warning
    captured = capsys.readouterr()
    assert f"WARNING: {tmp_path / 'at640.pkl'}: its images were detected at 640 pixels, large JPEGs decoded shrunk; " \
        "this run's settings (detected at 1,280 pixels, large JPEGs decoded shrunk) reach only images new or " \
        "changed since" in captured.err
    assert "nothing new" in captured.out and len(embfile.load(tmp_path / "at640.pkl").rows) == len(found[640].rows)
    # Extended at 1280 by new photos, the file records its last way and the one its earlier images were embedded
    # in, and keeps that record through further runs; --no-resume starts a file of one way again.
    earlier = [{"photo_det_size": 640, "photo_min_side": 2000}]
    others = [r for r in lfw_labels if r["kind"] != "single"][20:40]  # not copies of the photos embedded at 640
    for n in (2, 3):
        row_of_small_faces(lfw, others[(n - 2) * 10 : (n - 2) * 10 + 10], folder / f"IMG_{n:04d}.jpg")
        assert common.run(embed_main, [*again, "-q"]) == 0
        mixed = embfile.load(tmp_path / "at640.pkl")
        assert (mixed.meta["photo_det_size"], mixed.meta["photo_ways_before"]) == (1280, earlier)
        assert "; images embedded before by other settings: detected at 640 pixels, large JPEGs decoded shrunk)" in \
            describe(tmp_path / "at640.pkl").lines()[1]
    capsys.readouterr()
    assert common.run(embed_main, [*again, "--no-resume", "-q"]) == 0
    assert "WARNING" not in capsys.readouterr().err
    assert len(embfile.load(tmp_path / "at640.pkl").rows) >= 2 * 18
    assert "photo_ways_before" not in embfile.load(tmp_path / "at640.pkl").meta
    # A photo smaller than the size is not enlarged past 640 (LFW's 250-pixel photos lost faces at 1280): the
    # same rows as at 640; larger photos are detected at sizes a GPU sees few of.
    small = [(str(lfw / r["path"]), read_image(lfw / r["path"])) for r in photos[:12]]
    at = {size: embed_batch(small, models, EmbedOptions(mode="photos", photo_det_size=size)).rows
          for size in (640, 1280)}
    np.testing.assert_array_equal(at[1280].embeddings, at[640].embeddings)
    sizes = {det: [EmbedOptions(photo_det_size=det).detection_size((h, w)) for h, w in
                   ((250, 250), (500, 700), (750, 1000), (3024, 4032))] for det in (320, 640, 960, 1280)}
    assert sizes == {320: [320] * 4, 640: [640] * 4, 960: [640, 960, 960, 960], 1280: [640, 960, 1280, 1280]}
    # Larger than a photo decoded shrunk: it is shrunk only as far as it keeps the pixels it is detected at.
    larger = embed_cli.embed_options(embed_cli.build_parser().parse_args(
        ["--input", "x", "--output", "y", "--mode", "photos", "--det-size", "2560"]))
    assert larger.photo_decode_side == embed_run._photo_settings(larger)["photo_min_side"] == 2560
    assert dataclasses.replace(larger, photo_min_side=0).photo_decode_side == 0  # --full-resolution: whole
    for wrong in ("1000", "256", "8192", "x"):
        with pytest.raises(SystemExit):
            embed_cli.build_parser().parse_args(["--input", "x", "--output", "y", "--det-size", wrong])
        assert "argument --det-size: a multiple of 32 from 320 to 4096 pixels" in capsys.readouterr().err
    crops = ["--input", str(folder), "--output", str(tmp_path / "c.pkl"), "--det-size", "1280"]
    assert common.run(embed_main, crops) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("Error: --det-size is for --mode photos")
    on_the_cpu = ["--input", str(folder), "--output", str(tmp_path / "t.pkl"), "--device", "cpu", "--tensorrt"]
    assert common.run(embed_main, on_the_cpu) == 2 and not (tmp_path / "t.pkl").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("Error: --tensorrt is ONNX Runtime's provider")


def test_a_photo_that_cannot_be_decoded_again_keeps_its_faces_aligned_from_the_first_decoding(tmp_path, lfw,
                                                                                              lfw_labels,
                                                                                              models) -> None:
    """A photo rewritten or removed between the two decodings, or one that comes back another size, is embedded
    from its first decoding, as without decoding again: never from other pixels."""
    canvas, _ = _group_of_small_faces(lfw, lfw_labels)
    path = tmp_path / "group.jpg"
    cv2.imwrite(str(path), canvas, [cv2.IMWRITE_JPEG_QUALITY, 92])
    data = path.read_bytes()
    digest, half = images.content_digest(data), images.decode_bytes(data, 2)
    np.testing.assert_array_equal(images.read_again(path, 1, digest), images.decode_bytes(data))
    assert images.read_again(path, 1, images.content_digest(data + b"\0")) is None  # its bytes changed since
    assert images.read_again(tmp_path / "gone.jpg", 1, digest) is None
    batch = [(str(path), half)]
    options = EmbedOptions(mode="photos")
    first = embed_batch(batch, models, dataclasses.replace(options, photo_face_pixels=0)).rows
    for again in (None, cv2.resize(canvas, (4000, 3000))):  # not decoded again; decoded another size
        shrunk = ShrunkPhotos({str(path): 2}, functools.partial(lambda again, _path, _factor: again, again))
        np.testing.assert_array_equal(embed_batch(batch, models, options, shrunk).rows.embeddings, first.embeddings)
    shrunk = ShrunkPhotos({str(path): 2}, lambda _path, factor: images.read_again(path, factor, digest))
    assert not np.array_equal(embed_batch(batch, models, options, shrunk).rows.embeddings, first.embeddings)


def test_batched_detection_finds_what_one_image_at_a_time_finds(lfw, lfw_labels, video_crops, models) -> None:
    """The testpack detector (batch fixed at 1 in the file) runs whole batches after the
    rewrite, and every box, landmark and score matches the one-image-per-call result."""
    detector = models.detector
    assert detector.layout == "anchor" and detector.max_batch > 1
    photos = [read_image(lfw / r["path"]) for r in lfw_labels[:11]] + [read_image(insightface_sample("t1.jpg"))]
    crops = [read_image(p) for c in video_crops.values() for p in c][:11]
    # At 1280 a call takes a quarter of the canvases (the same pixels as at 640), at 4096 one.
    most = detector.max_batch
    assert [detector.batch_at((s, s)) for s in (192, 640, 1280, 4096)] == [most, most, most // 4, 1] and most >= 8
    group = photos[-1]  # t1.jpg, six people
    large = [group, cv2.flip(group, 1), cv2.resize(group, None, fx=1.5, fy=1.5)]
    for images_, size, pad in ((photos, 640, 0.0), (crops, 192, 0.3), (large, 1280, 0.0)):
        many = detector.detect_many(images_, (size, size), 0.35, pad_ratio=pad)
        single = [detector.detect(image, (size, size), 0.35, pad_ratio=pad) for image in images_]
        assert [len(d) for d in many] == [len(d) for d in single] and sum(len(d) for d in single) >= len(images_)
        for a, b in zip(many, single):
            np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
            np.testing.assert_allclose(a.kps, b.kps, atol=1e-3)
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


class Scrambled:
    """A CPU session whose output rows come back in another order."""

    def __init__(self, serialized: bytes):
        from face_organizer.providers import open_session

        self.inner = open_session(serialized, "det", "cpu", 0, quiet=True)[0]

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, names, feeds):
        return [o[::-1].copy() for o in self.inner.run(names, feeds)]


def test_crops_detected_by_the_coarse_levels_give_the_whole_networks_faces(lfw, lfw_labels, models,
                                                                          monkeypatch) -> None:
    """On the CPU the detector's coarse copy (strides 16 and 32) finds the face of a crop; only crops whose face
    could be one of the finest level's (small on the canvas, or none found) go to the whole network, and every
    crop's chosen face, box, score and rivals come out as the whole network alone gives them."""
    from face_organizer.samples import central_landmarks, junk_crop, video_crop

    detector = models.detector
    assert detector.coarse is not None and detector.coarse.strides == [16, 32] and detector.strides == [8, 16, 32]
    rng = np.random.default_rng(5)
    crops, zooms = [], []
    for i, row in enumerate(lfw_labels[:120:3]):
        photo = read_image(lfw / row["path"])
        kps = central_landmarks(photo, detector)
        if kps is None:
            continue
        # From a face a sixth of the crop (the coarse levels find none) and a fifth (they find it, but the finest
        # level's face is chosen) to one beyond its edges.
        zoom = (0.3, 0.4, 0.6, 0.9, 1.3, 1.8, 2.4)[i % 7]
        crops.append(video_crop(photo, kps, zoom=zoom, occlude=(None, "bar", "blob")[i % 3], seed=i))
        zooms.append(zoom)
    group = read_image(insightface_sample("t1.jpg"))
    others = [group, group[:, : group.shape[1] // 2], read_image(lfw / lfw_labels[0]["path"]), junk_crop(group, rng)]
    images_ = crops + others
    whole: set[int] = set()  # the images the whole network saw
    detect_many = detector.detect_many

    def recorded(images, *args, **kwargs):
        whole.update(id(image) for image in images)
        return detect_many(images, *args, **kwargs)

    monkeypatch.setattr(detector, "detect_many", recorded)
    several: set[int] = set()
    found = find_crop_faces(images_, detector, EmbedOptions(), several=several)
    again = [id(crop) in whole for crop in crops]
    monkeypatch.setattr(detector, "coarse", None)
    several_whole: set[int] = set()
    want = find_crop_faces(images_, detector, EmbedOptions(), several=several_whole)
    assert sum(f is None for f in want) <= 2
    assert several == several_whole and several & set(range(len(crops), len(images_)))  # the group photo
    for got, expected in zip(found, want):
        assert (got is None) == (expected is None)
        if got is not None and expected is not None:
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])
            assert got[2] == expected[2]
    # Crops a face fills are detected by the coarse levels alone; crops zoomed out far by the whole network too.
    assert not any(a for a, z, f in zip(again, zooms, want) if z >= 0.9 and f is not None)
    assert all(a for a, z in zip(again, zooms) if z < 0.5) and sum(again) < len(crops) / 2


def test_no_coarse_copy_where_it_would_not_give_the_whole_networks_outputs(testpack, models) -> None:
    import onnx

    from face_organizer.detection import coarse_detector, coarse_levels, load_detector_model, with_dynamic_input_batch
    from face_organizer.providers import open_session

    model = with_dynamic_input_batch(load_detector_model(testpack.detector))

    def opened(serialized: bytes):
        return open_session(serialized, "det", "cpu", 0, quiet=True)[0]

    assert coarse_detector(model, models.detector, opened) is not None
    assert coarse_detector(model, models.detector, Scrambled) is None
    recogniser = onnx.load(str(testpack.recognizer))
    assert coarse_levels(recogniser) is None  # one output: not SCRFD's


def test_each_images_rows_are_read_from_the_batch_output_without_copying_it() -> None:
    from face_organizer.detection import split_batch, take_rows

    images, positions, anchors, channels = 3, 5, 2, 4
    # "anchor" layout: rows ordered by anchor position, then image, then anchor.
    per_image = np.arange(images * positions * anchors * channels, dtype=np.float32).reshape(images, positions * anchors, channels)
    interleaved = per_image.reshape(images, positions, anchors, channels).transpose(1, 0, 2, 3).reshape(-1, channels)
    keep = np.array([0, 3, 4, 9], np.intp)
    layouts: tuple[tuple[np.ndarray, Literal["image", "anchor"]], ...] = (
        (interleaved, "anchor"), (per_image.reshape(-1, channels), "image"), (per_image, "image"))
    for output, layout in layouts:
        parts = split_batch(output, images, layout, anchors)
        assert len(parts) == images and all(np.shares_memory(part, output) for part in parts)
        for i, part in enumerate(parts):
            np.testing.assert_array_equal(part.reshape(-1, channels), per_image[i])
            np.testing.assert_array_equal(take_rows(part, keep), per_image[i][keep])


def test_detector_rewrite_kept_only_when_it_reproduces_single_outputs(testpack) -> None:
    import onnx

    from face_organizer.detection import SCRFD, batchable_detector, with_dynamic_input_batch
    from face_organizer.providers import open_session

    model = onnx.load(str(testpack.detector))
    reference, _ = open_session(model.SerializeToString(), "det", "cpu", 0, quiet=True)

    session, layout = batchable_detector(model, Scrambled, reference)
    assert session is reference and layout is None
    assert SCRFD(session, layout, max_batch=8).max_batch == 1
    session, layout = batchable_detector(model, lambda b: open_session(b, "det", "cpu", 0, quiet=True)[0], reference)
    assert session is not reference and layout == "anchor"
    # A file whose batch is symbolic already: kept as it is, its output layout still probed.
    symbolic, _ = open_session(with_dynamic_input_batch(model).SerializeToString(), "det", "cpu", 0, quiet=True)
    session, layout = batchable_detector(model, Scrambled, symbolic)
    assert session is symbolic and layout == "anchor"
    # On a GPU, batched convolutions differ from single ones in the last digits (cuDNN picks its
    # algorithms per batch size, TF32): such a session is still used batched.
    session, layout = batchable_detector(model, GpuLike, reference)
    assert isinstance(session, GpuLike) and layout == "anchor"


class GpuLike:
    """A batched CPU session whose outputs carry a relative error of about 1e-3, as on a GPU."""

    def __init__(self, serialized: bytes):
        from face_organizer.providers import open_session

        self.inner = open_session(serialized, "model", "cpu", 0, quiet=True)[0]
        self.rng = np.random.default_rng(0)

    def run(self, names, feeds):
        return [o * (1 + 1e-3 * self.rng.standard_normal(o.shape)).astype(o.dtype) for o in self.inner.run(names, feeds)]


def test_recogniser_rewrite_tolerates_gpu_rounding_but_not_mixed_faces(testpack) -> None:
    import onnx

    from face_organizer.providers import open_session
    from face_organizer.recognition import batchable_model

    model = onnx.load(str(testpack.recognizer))
    reference, _ = open_session(model.SerializeToString(), "rec", "cpu", 0, quiet=True)

    class Mixed(GpuLike):  # a rewrite that leaks one face into another's output
        def run(self, names, feeds):
            out = self.inner.run(names, feeds)[0]
            return [out + 0.2 * np.roll(out, 1, axis=0)]

    session, batchable = batchable_model(model, GpuLike, reference)
    assert batchable and isinstance(session, GpuLike)
    session, batchable = batchable_model(model, Mixed, reference)
    assert not batchable and session is reference


def _good_and_bad(tmp_path: Path, video_crops) -> tuple[Path, list[Path]]:
    folder = tmp_path / "input"
    good = []
    for year in ("2017", "2008"):
        for person, crops in video_crops.items():
            for crop in crops[:3]:
                target = folder / year / f"{person}_{crop.name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(crop.read_bytes())
                good.append(target)
    jpeg = (folder / "2017" / "whole.jpg")
    write_image(jpeg, read_image(good[0]))
    good.append(jpeg)
    data = jpeg.read_bytes()
    (folder / "2017" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "2017" / "empty.png").write_bytes(b"")
    (folder / "2017" / "notes.jpg").write_text("not an image at all")
    (folder / "2017" / "panorama.png").write_bytes(png_claiming(40_000, 40_000))
    (folder / "2017" / "._frame_0001.png").write_bytes(b"\x00\x05\x16\x07")
    (folder / "2017" / "dir.png").mkdir()
    os.symlink(folder / "unmounted" / "frame.png", folder / "2017" / "on_nas.png")  # its drive is not mounted
    return folder, good


def test_heic_avif_and_jpeg2000_photos_are_embedded_as_their_jpeg_twins(tmp_path, lfw, lfw_labels,
                                                                        testpack_dir) -> None:
    # A photo library from an iPhone is HEIC, some Android phones save AVIF, scanned archives JPEG 2000; such
    # photos were left out as a format not read here.
    from PIL import Image
    from test_images import _avif, _heic

    photos = [lfw / r["path"] for r in lfw_labels if r["identity"] == "Tony_Blair"][:4]
    folder = tmp_path / "library"
    (folder / "jpeg").mkdir(parents=True)
    for i, photo in enumerate(photos):
        image = read_image(photo)
        cv2.imwrite(str(folder / "jpeg" / f"{i}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        _heic(folder / "iphone" / f"IMG_{i}.HEIC", image, orientation=6 if i % 2 else 1)
        _avif(folder / "android" / f"PXL_{i}.avif", image, orientation=1 if i % 2 else 6)
        (folder / "scans").mkdir(exist_ok=True)
        Image.fromarray(image[:, :, ::-1]).save(folder / "scans" / f"{i}.{'J2K' if i % 2 else 'jp2'}", "JPEG2000")
    emb = tmp_path / "emb.pkl"
    assert run_cli(["--input", str(folder), "--output", str(emb), "--model", str(testpack_dir), "-q"]) == 0
    ef = embfile.load(emb)
    assert not ef.failed and len(ef.rows.paths) == 16 and ef.rows.detected.all()
    row = {Path(p).relative_to(folder).as_posix(): e for p, e in zip(ef.rows.paths, ef.rows.embeddings)}
    for i in range(len(photos)):  # the same face: the compression, turned or not, changes little
        assert float(row[f"iphone/IMG_{i}.HEIC"] @ row[f"jpeg/{i}.jpg"]) > 0.95, i
        assert float(row[f"android/PXL_{i}.avif"] @ row[f"jpeg/{i}.jpg"]) > 0.95, i
        assert float(row[f"scans/{i}.{'J2K' if i % 2 else 'jp2'}"] @ row[f"jpeg/{i}.jpg"]) > 0.95, i


def test_cli_skips_and_reports_bad_files(tmp_path, video_crops, testpack_dir, capsys, monkeypatch) -> None:
    folder, good = _good_and_bad(tmp_path, video_crops)
    out = tmp_path / "emb.pkl"
    monkeypatch.setenv("FACE_ORGANIZER_CPUS", "1")  # two decoding processes for one CPU: warned about
    code = run_cli(["--input", str(folder / "2017"), str(folder / "2008"), "--output", str(out),
                    "--model", str(testpack_dir), "--workers", "2", "--batch-size", "8", "-q"])
    assert code == 0
    ef = embfile.load(out)
    assert sorted(ef.rows.paths) == sorted(str(p) for p in good) == ef.rows.paths
    reasons = dict(ef.failed)
    assert set(reasons) == {str(folder / "2017" / n) for n in ("truncated.jpg", "empty.png", "notes.jpg", "on_nas.png",
                                                              "panorama.png")}
    assert reasons[str(folder / "2017" / "panorama.png")].startswith("image too large to decode")
    assert reasons[str(folder / "2017" / "empty.png")] == "empty file"
    assert reasons[str(folder / "2017" / "on_nas.png")] == "broken symbolic link (its target is missing)"
    meta = ef.meta
    assert meta["embedding_size"] == 128 and meta["device"] == "cpu" and meta["complete"] is True
    assert meta["model_files"]["recognition"] == "MobileFaceNet.onnx" and meta["tool_version"] == __version__
    # Where the model puts faces blurred past recognition, for cluster_faces to set them aside.
    centre = np.asarray(meta["unrecognisable_centre"])
    assert centre.shape == (128,) and abs(np.linalg.norm(centre) - 1) < 1e-5
    printed, err = capsys.readouterr()
    assert "--workers 2: more image-decoding processes than the 1 CPU this process may use" in err
    assert "skipped: 5" in printed and "truncated JPEG: 1" in printed
    assert f"  {folder / '2017' / 'empty.png'}: empty file" in printed.splitlines()  # named, not only counted
    many = RunSummary(output=str(out), device="cpu", skipped=Counter({"empty file": 9}),
                      skipped_examples=[(f"/in/{i}.png", "empty file") for i in range(5)])
    assert "  … all 9 are listed under 'failed' in the embeddings file" in many.lines()
    assert RunSummary(output=str(out), device="cpu", embedded=1, faces=1).lines()[2].startswith("embedded now: 1 image, 1 face;")
    # Plain pickle works for users' own scripts.
    with open(out, "rb") as handle:
        plain = pickle.load(handle)
    assert plain["embeddings"].dtype == np.float32 and len(plain["paths"]) == len(good)


def test_a_rerun_that_finds_nothing_new_leaves_the_file_as_it_was(tmp_path, video_crops, testpack_dir, monkeypatch,
                                                                  capsys) -> None:
    folder, good = _good_and_bad(tmp_path, video_crops)
    out = tmp_path / "emb.pkl"
    command = ["--input", str(folder / "2017"), str(folder / "2008"), "--output", str(out), "--model", str(testpack_dir),
               "--batch-size", "8", "-q"]
    assert run_cli(command) == 0
    written, stat, first = out.read_bytes(), out.stat(), embfile.load(out)
    capsys.readouterr()

    # The bad files are tried again and fail for the same reasons: nothing to write, and no model is loaded
    # for it (on a GPU, seconds in every pass of a loop over year folders).
    def no_models(*args: object, **kwargs: object) -> None:
        raise AssertionError("the models were loaded for a re-run with nothing to embed")

    monkeypatch.setattr("face_organizer.cli.embed.load_face_models", no_models)
    assert run_cli(command) == 0
    printed = capsys.readouterr().out
    assert f"already embedded: {len(good)}" in printed and "skipped: 5" in printed
    assert f"({len(good)} faces); nothing new, so it was left as it was" in printed
    assert "device: none (nothing to embed)" in printed
    again = out.stat()
    assert (again.st_ino, again.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns) and out.read_bytes() == written
    assert not parts_dir(out).exists()
    assert run_cli(command[:2] + command[3:]) == 0  # one of the two folders: nothing new either
    assert out.stat().st_mtime_ns == stat.st_mtime_ns
    elsewhere = sum(1 for p in good if folder / "2008" in p.parents)
    assert 0 < elsewhere < len(good) and (f"held in the file but not found under the inputs now: {elsewhere} images "
                                          "(moved or deleted since, or from other inputs); kept") in capsys.readouterr().out
    # A bad file deleted since is no longer listed as failed; still no model is needed to say so.
    (folder / "2017" / "empty.png").unlink()
    assert run_cli(command) == 0
    printed = capsys.readouterr().out
    assert "failed before and deleted since: 1 image; no longer listed as failed" in printed
    assert "skipped: 4" in printed and "left as it was" not in printed
    cleaned = embfile.load(out)
    assert dict(cleaned.failed) == {p: r for p, r in first.failed if not p.endswith("empty.png")}
    assert cleaned.rows.paths == first.rows.paths and cleaned.signatures == first.signatures
    np.testing.assert_array_equal(cleaned.rows.embeddings, first.rows.embeddings)
    assert (cleaned.meta["inputs"], cleaned.meta["complete"]) == (first.meta["inputs"], True)
    assert run_cli(command) == 0 and "left as it was" in capsys.readouterr().out  # said once
    monkeypatch.undo()
    (folder / "2017" / "empty.png").write_bytes(b"")  # back again: tried, and it fails as before
    assert run_cli(command) == 0 and dict(embfile.load(out).failed) == dict(first.failed)
    capsys.readouterr()
    # A year folder emptied since (its images moved into person folders): the loop over years goes on.
    emptied = tmp_path / "emptied"
    emptied.mkdir()
    for _ in range(2):  # the first time, the file records the folder as one of its inputs
        assert run_cli(["--input", str(emptied)] + command[3:]) == 0
    said = capsys.readouterr()
    assert said.out.count("images found: 0") == 2 and "left as it was" in said.out and "no images" in said.err
    kept = embfile.load(out)
    np.testing.assert_array_equal(kept.rows.embeddings, first.rows.embeddings)
    assert kept.rows.paths == first.rows.paths and kept.failed == first.failed
    stat = out.stat()
    assert run_cli(["--input", str(emptied), "--output", str(tmp_path / "new.pkl")] + command[5:]) == 2  # no file yet
    assert "Error: no images" in capsys.readouterr().err and not (tmp_path / "new.pkl").exists()

    # A corrupt file mended since, or a new image: the file is written again, the earlier rows kept.
    (folder / "2017" / "notes.jpg").write_bytes((folder / "2017" / "whole.jpg").read_bytes())
    assert run_cli(command) == 0
    after = embfile.load(out)
    assert out.stat().st_ino != stat.st_ino and len(after.rows) == len(good) + 1
    assert "left as it was" not in capsys.readouterr().out
    assert str(folder / "2017" / "notes.jpg") not in dict(after.failed) and len(after.failed) == 4
    index = {p: i for i, p in enumerate(after.rows.paths)}
    np.testing.assert_array_equal(after.rows.embeddings[[index[p] for p in first.rows.paths]], first.rows.embeddings)
    new_folder = folder / "2019"
    new_folder.mkdir()
    (new_folder / "frame.png").write_bytes(good[0].read_bytes())
    (folder / "2017" / "truncated.jpg").unlink()  # and, in a folder this run does not name, a bad file deleted
    capsys.readouterr()
    assert run_cli(command[:1] + [str(new_folder)] + command[3:]) == 0
    assert "failed before and deleted since: 1 image" in capsys.readouterr().out
    grown = embfile.load(out)
    assert len(grown.rows) == len(good) + 2 and str(new_folder) in grown.meta["inputs"]
    assert sorted(dict(grown.failed)) == sorted(p for p in dict(after.failed) if not p.endswith("truncated.jpg"))
    assert str(folder / "2017") in grown.meta["inputs"]


def test_a_dry_run_says_what_the_run_would_embed_and_writes_nothing(tmp_path, video_crops, testpack_dir, models,
                                                                    monkeypatch, capsys) -> None:
    folder, good = _good_and_bad(tmp_path, video_crops)
    out = tmp_path / "out" / "emb.pkl"
    command = ["--input", str(folder), "--output", str(out), "--model", str(testpack_dir), "--batch-size", "8", "-q"]

    def dry_run() -> list[str]:
        def no_models(*args: object, **kwargs: object) -> None:
            raise AssertionError("a dry run loaded the models")

        before = tree_of(tmp_path)
        with monkeypatch.context() as m:
            m.setattr("face_organizer.cli.embed.load_face_models", no_models)
            assert run_cli([*command, "--dry-run"]) == 0
        assert tree_of(tmp_path) == before  # no file, part, lock or folder made, nothing touched
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "dry run: nothing was embedded or written"
        return lines[1:]

    bad = 5  # truncated, empty, not an image, too large, a broken link: each a failure the run lists
    assert dry_run() == [f"embeddings file: {out}: new", f"images found: {len(good) + bad}; already embedded: 0",
                         f"to embed: {len(good) + bad} images"]
    # Interrupted before its last batch: the parts are counted, and what the re-run then embeds is what the
    # dry run said, also with an image rewritten since, one added, one of the failures mended and one deleted.
    paths = discover_images([folder])
    interrupted_at(paths, paths[-1], out, models, batch_size=4)
    state = embed_run.read_state(out)
    held = len(state.held)
    failed = {Path(p).name: p for p in state.failed}
    assert {"notes.jpg", "empty.png"} <= set(failed) and state.parts_read > 1 and not out.exists()
    Path(min(state.held)).write_bytes(good[-2].read_bytes())
    (folder / "2008" / "new.png").write_bytes(good[1].read_bytes())
    Path(failed["notes.jpg"]).write_bytes((folder / "2017" / "whole.jpg").read_bytes())
    Path(failed["empty.png"]).unlink()
    found = len(good) + bad  # one added, one deleted
    said = dry_run()
    assert said[0].startswith(f"embeddings file: {out}: {held} faces so far, and ")
    assert said[0].endswith(" checkpoint parts beside it that the run would merge into it")
    assert said[1:] == [f"images found: {found}; already embedded: {held - 1}",
                        f"to embed: {found - held + 1} images (new: {found - held - 1}; changed since embedded: 1; "
                        "failed before, tried again: 1)",
                        "failed before and deleted since: 1 image; no longer listed as failed"]
    assert run_cli(command) == 0
    done = capsys.readouterr().out
    assert f"images found: {found}; already embedded: {held - 1}; changed since embedded, so embedded again: 1" in done
    skipped = bad - 2  # the mended one and the deleted one no longer fail
    assert f"embedded now: {found - held + 1 - skipped} images" in done and f"skipped: {skipped} (" in done
    # Finished: nothing to embed but the failures, which are tried again; a file of another mode is refused as
    # the run would refuse it, and --no-resume would replace it.
    assert dry_run() == [f"embeddings file: {out}: {found - skipped} faces",
                         f"images found: {found}; already embedded: {found - skipped}",
                         f"to embed: {skipped} images (new: 0; changed since embedded: 0; failed before, tried "
                         f"again: {skipped})"]
    assert run_cli([*command, "--dry-run", "--mode", "photos"]) == 2
    assert "was made with MobileFaceNet.onnx (128-d, crops mode), this run uses MobileFaceNet.onnx (photos mode)" in \
        capsys.readouterr().err
    command.append("--no-resume")
    assert dry_run() == [f"embeddings file: {out}: replaced (--no-resume), with any checkpoint parts beside it",
                         f"images found: {found}; already embedded: 0", f"to embed: {found} images"]


def test_no_resume_replaces_an_embeddings_file_but_never_a_photo_or_a_note_named_as_output(
        tmp_path, video_crops, testpack_dir, models, monkeypatch, capsys) -> None:
    crops = [p for c in video_crops.values() for p in c][:4]
    folder = tmp_path / "input"
    folder.mkdir()
    for crop in crops:
        shutil.copy(crop, folder)
    photo, note = tmp_path / "holiday.jpg", tmp_path / "notes.txt"
    cv2.imwrite(str(photo), read_image(crops[0]))
    note.write_text("who is who\n")
    kept = {f: f.read_bytes() for f in (photo, note)}

    def no_models(*args: object, **kwargs: object) -> None:
        raise AssertionError("the models were loaded before the output was checked")

    for target in (photo, note):
        command = ["--input", str(folder), "--output", str(target), "--model", str(testpack_dir), "--no-resume", "-q"]
        with monkeypatch.context() as m:
            m.setattr("face_organizer.cli.embed.load_face_models", no_models)
            for dry in ([], ["--dry-run"]):
                assert run_cli([*command, *dry]) == 2
                assert f"--output {target} is a file that is not an embeddings file (not a pickle), which --no-resume " \
                       "would replace" in capsys.readouterr().err
        with pytest.raises(SetupError, match="not an embeddings file"):  # the library refuses it too
            run_embeddings(discover_images([folder]), target, models, resume=False)
    assert {f: f.read_bytes() for f in kept} == kept and not list(tmp_path.glob("*.parts"))
    # An embeddings file, or an empty file, is replaced as asked.
    out, empty = tmp_path / "emb.pkl", tmp_path / "empty.pkl"
    empty.touch()
    for target in (out, out, empty):
        assert run_cli(["--input", str(folder), "--output", str(target), "--model", str(testpack_dir), "--no-resume",
                        "-q"]) == 0
        assert embfile.load(target).rows.paths == discover_images([folder])
    assert "embedded now: 4 images" in capsys.readouterr().out


def test_new_images_are_the_only_ones_embedded(tmp_path, video_crops, models) -> None:
    crops = [p for c in video_crops.values() for p in c][:10]
    out = tmp_path / "emb.pkl"
    first = run_embeddings([str(p) for p in crops[:6]], out, models, batch_size=4)
    assert first.embedded == 6
    before = embfile.load(out)
    again = run_embeddings([str(p) for p in crops], out, models, batch_size=4)
    assert again.already_done == 6 and again.embedded == 4
    after = embfile.load(out)
    assert after.rows.paths == sorted(str(p) for p in crops)
    index = {p: i for i, p in enumerate(after.rows.paths)}
    for i, p in enumerate(before.rows.paths):
        np.testing.assert_array_equal(after.rows.embeddings[index[p]], before.rows.embeddings[i])


def test_a_file_rewritten_since_it_was_embedded_is_embedded_again(tmp_path, video_crops, models) -> None:
    # Frames extracted again into the same folder: same names, other faces.
    blair, koizumi = video_crops["Tony_Blair"], video_crops["Junichiro_Koizumi"]
    folder = tmp_path / "2017"
    folder.mkdir()
    frames = []
    for i, source in enumerate(blair[:6]):
        frames.append(folder / f"frame_{i:04d}.png")
        frames[-1].write_bytes(source.read_bytes())
    out = tmp_path / "emb.pkl"
    run_embeddings([str(p) for p in frames], out, models, batch_size=4, progress=False)
    before = embfile.load(out)
    assert set(before.signatures) == {str(p) for p in frames}

    frames[2].write_bytes(koizumi[0].read_bytes())  # overwritten with another person's face
    os.utime(frames[2], ns=(time.time_ns(), time.time_ns() + 10**9))  # ... at a later time
    again = run_embeddings([str(p) for p in frames], out, models, batch_size=4, progress=False)
    assert again.changed == 1 and again.embedded == 1 and again.already_done == 5
    assert "changed since embedded, so embedded again: 1" in "\n".join(again.lines())
    after = embfile.load(out)
    assert after.rows.paths == before.rows.paths  # one row per image still
    fresh = embed_batch([(str(frames[2]), read_image(frames[2]))], models, EmbedOptions()).rows.embeddings[0]
    np.testing.assert_allclose(after.rows.embeddings[2], fresh, atol=1e-5)
    assert float(after.rows.embeddings[2] @ before.rows.embeddings[2]) < 0.5  # another person now
    np.testing.assert_array_equal(np.delete(after.rows.embeddings, 2, 0), np.delete(before.rows.embeddings, 2, 0))
    assert after.signatures[str(frames[2])] == images.file_signature(str(frames[2]))
    assert run_embeddings([str(p) for p in frames], out, models, progress=False).embedded == 0

    # Two more rewritten; the run is interrupted after the first was checkpointed.
    for frame, source in ((frames[3], koizumi[1]), (frames[4], koizumi[2])):
        frame.write_bytes(source.read_bytes())
        os.utime(frame, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))

    def interrupted(paths):
        if str(frames[4]) in paths:
            raise KeyboardInterrupt
        return images.load_many(paths)

    with pytest.raises(KeyboardInterrupt):
        run_embeddings([str(p) for p in frames], out, models, batch_size=1, streams=1, checkpoint_seconds=0,
                       progress=False, loader=interrupted)
    assert len(list(parts_dir(out).glob("part-*.pkl"))) == 1
    resumed = run_embeddings([str(p) for p in frames], out, models, progress=False)
    assert resumed.changed == 1 and resumed.embedded == 1  # frame 3 came from the checkpoint
    final = embfile.load(out)
    assert final.rows.paths == before.rows.paths
    for i in (3, 4):
        assert float(final.rows.embeddings[i] @ before.rows.embeddings[i]) < 0.5


def test_files_without_signatures_are_trusted_and_bad_signatures_refused(tmp_path, video_crops, models) -> None:
    crops = [str(p) for p in video_crops["Jean_Chretien"][:4]]
    out = tmp_path / "emb.pkl"
    run_embeddings(crops, out, models, progress=False)
    d = pickle.loads(out.read_bytes())
    assert d["file_signatures"]["paths"] == crops and d["file_signatures"]["size"].dtype == np.int64
    old = dict(d)
    del old["file_signatures"]  # as written before the key existed
    out.write_bytes(pickle.dumps(old))
    assert embfile.load(out).signatures == {}
    assert run_embeddings(crops, out, models, progress=False).embedded == 0
    assert set(embfile.load(out).signatures) == set(crops)  # filled in for the images it read
    bad = dict(d, file_signatures={"paths": crops, "size": np.zeros(2, np.int64), "mtime_ns": np.zeros(4, np.int64)})
    out.write_bytes(pickle.dumps(bad))
    with pytest.raises(EmbeddingsFileError, match="'file_signatures' must hold"):
        embfile.load(out)
    # Digests of the files' bytes likewise: absent in older files, a broken table refused.
    del old["content_digests"]
    out.write_bytes(pickle.dumps(old))
    assert embfile.load(out).digests == {}
    bad = dict(d, content_digests={"paths": crops, "blake2b_128": np.zeros((4, 8), np.uint8)})
    out.write_bytes(pickle.dumps(bad))
    with pytest.raises(EmbeddingsFileError, match="'content_digests' must hold 'paths' and one 16-byte"):
        embfile.load(out)


def test_log_file_keeps_what_a_detached_run_prints(tmp_path, video_crops, testpack_dir, capfd) -> None:
    # docker exec -d discards a run's output: --log appends it (log, progress, summary, errors) to a file.
    crops = [p for c in video_crops.values() for p in c][:6]
    folder = tmp_path / "in"
    for p in crops:
        (folder / p.name).parent.mkdir(parents=True, exist_ok=True)
        (folder / p.name).write_bytes(p.read_bytes())
    log = tmp_path / "logs" / "gpu0.log"
    script = ROOT / "scripts" / "generate_embeddings.py"
    args = [sys.executable, str(script), "--model", str(testpack_dir), "--output", str(tmp_path / "emb.pkl"),
            "--log", str(log), "--input"]
    done = subprocess.run([*args, str(folder)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == f"logging to {log}\n"
    text = log.read_text()
    assert text.startswith("=== ") and f"generate_embeddings.py --model {testpack_dir}" in text.splitlines()[0]
    assert f"INFO: {len(crops)} images found under {folder}" in text
    assert f"100%|##########| {len(crops)}/{len(crops)}" in text and "\r" not in text  # a line per update
    assert f"embedded now: {len(crops)} images, {len(crops)} faces" in text
    failed = subprocess.run([*args, str(tmp_path / "gone")], capture_output=True, text=True)
    assert failed.returncode == 2
    assert failed.stderr == f"logging to {log}\nexit 2: the end of {log} says why\n"
    again = log.read_text()
    assert again.startswith(text) and again.endswith(f"Error: input folder not found: {tmp_path / 'gone'}\n")
    # Run in this process, the command gives the process's stdout and stderr back when it ends.
    capfd.readouterr()
    assert common.run(embed_main, ["--input", str(folder), "--output", str(tmp_path / "emb.pkl"), "--model",
                                   str(testpack_dir), "--log", str(log), "-q"]) == 0
    assert not fsutil.RUN_FILES  # the log is no longer this process's own file: an output holding it is not new
    os.write(1, b"after the run\n")
    assert capfd.readouterr().out.endswith("after the run\n") and "after the run" not in log.read_text()
    # A folder, or a name ending in a slash (a folder meant), is refused on the terminal: no file "logs" is made.
    for named in (f"{tmp_path / 'logs'}", f"{tmp_path / 'more_logs'}/"):
        assert common.run(embed_main, ["--input", str(folder), "--output", str(tmp_path / "emb.pkl"), "--model",
                                       str(testpack_dir), "--log", named]) == 2
        assert capfd.readouterr().err == (f"Error: --log {named} is a folder; give a file name such as "
                                          f"{os.path.join(os.path.abspath(named), 'run.log')}\n")
    assert not (tmp_path / "more_logs").exists()
    # An image or an embeddings file named as --log (the two names swapped) is refused, and left as it was.
    photo = tmp_path / "in" / crops[0].name
    for named in (photo, tmp_path / "emb.pkl"):
        kept = named.read_bytes()
        assert common.run(embed_main, ["--input", str(folder), "--output", str(tmp_path / "other.pkl"), "--model",
                                       str(testpack_dir), "--log", str(named)]) == 2
        assert capfd.readouterr().err.startswith(f"Error: --log {named} is a file that is not a log (an image, an "
                                                 "embeddings file: it holds binary data)")
        assert named.read_bytes() == kept
    assert not (tmp_path / "other.pkl").exists()
    # A pipe is not read to tell (that waits for input): --log /dev/stdout into a pipe runs as before.
    shown = subprocess.run([sys.executable, str(ROOT / "scripts" / "embeddings_info.py"), str(tmp_path / "emb.pkl"),
                            "--log", "/dev/stdout"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and f"{tmp_path / 'emb.pkl'}" in shown.stdout


def test_kill_9_then_rerun_gives_the_uninterrupted_result(tmp_path, video_crops, testpack_dir, capsys) -> None:
    folder = copies_of(video_crops, tmp_path / "in", 3)  # enough images that the run is still going when killed
    args = ["--input", str(folder), "--model", str(testpack_dir), "--workers", "0", "--batch-size", "4",
            "--checkpoint-seconds", "0", "-q"]
    reference, resumed = tmp_path / "ref.pkl", tmp_path / "resumed.pkl"
    assert run_cli(args + ["--output", str(reference)]) == 0

    script = ROOT / "scripts" / "generate_embeddings.py"
    proc = subprocess.Popen([sys.executable, str(script), *args, "--output", str(resumed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(parts_dir(resumed).glob("part-*.pkl"))) < 3:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.02)
    capsys.readouterr()
    assert run_cli(args + ["--output", str(resumed)]) == 2  # a second writer of the same file is refused
    err = capsys.readouterr().err
    assert f"another process, pid {proc.pid} (" in err and f"is writing {resumed}; " in err
    assert f"or stop it with kill {proc.pid} (its progress is saved)" in err
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not resumed.exists() and parts_dir(resumed).is_dir()

    lock = tmp_path / ".resumed.pkl.lock"
    assert lock.exists()  # left by the killed run, but no longer held: it does not block the re-run
    partial = tmp_path / ".resumed.pkl.k9x_2abc.tmp"  # what a run killed while writing its file leaves
    partial.write_bytes(b"\x80\x05" + bytes(4096))
    assert run_cli(args + ["--output", str(resumed)]) == 0
    assert not lock.exists() and not partial.exists()
    ref, res = embfile.load(reference), embfile.load(resumed)
    assert res.rows.paths == ref.rows.paths
    np.testing.assert_allclose(res.rows.embeddings, ref.rows.embeddings, atol=1e-5)
    np.testing.assert_array_equal(res.rows.detected, ref.rows.detected)
    assert not parts_dir(resumed).exists()


@pytest.mark.parametrize("checkpoint_seconds", ["0", "3600"])
def test_disk_full_at_the_final_write_is_one_line_and_the_rerun_embeds_nothing_again(tmp_path, video_crops, testpack_dir,
                                                                                       monkeypatch, capsys,
                                                                                       checkpoint_seconds) -> None:
    # The checkpoint parts fit, the final file (as large again) does not. With no checkpoint yet (a run shorter
    # than --checkpoint-seconds), what the run embedded goes into a part when the final file fails.
    import errno

    folder = tmp_path / "in"
    for person, crops in video_crops.items():
        for p in crops:
            (folder / person).mkdir(parents=True, exist_ok=True)
            (folder / person / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "emb.pkl"
    args = ["--input", str(folder), "--output", str(out), "--model", str(testpack_dir), "--workers", "0",
            "--checkpoint-seconds", checkpoint_seconds, "-q"]
    real_save = embfile.save

    def full_disk(path, ef):
        if Path(path) == out:
            with fsutil.atomic_open(path):  # the write fails as a full disk's does, naming no file
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(path, ef)

    monkeypatch.setattr(embfile, "save", full_disk)
    capsys.readouterr()
    assert run_cli(args) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the CPU warning, one line
    assert last.startswith(f"Error: No space left on device: {out}; ")  # the file it could not write
    assert last.endswith("then re-run the same command: it continues where it stopped")
    assert not out.exists() and list(parts_dir(out).glob("part-*.pkl"))
    monkeypatch.setattr(embfile, "save", real_save)
    assert run_cli(args) == 0
    total = sum(len(c) for c in video_crops.values())
    assert f"images found: {total:,}; already embedded: {total:,}" in capsys.readouterr().out
    assert len(embfile.load(out).rows.paths) + len(embfile.load(out).no_face) == total and not parts_dir(out).exists()


def test_sigterm_saves_progress_and_the_rerun_continues(tmp_path, video_crops, testpack_dir) -> None:
    """kill, docker stop, systemd: the run saves what it embedded since the last checkpoint."""
    crops = [p for c in video_crops.values() for p in c]
    folder = tmp_path / "in"
    for i in range(5):
        for p in crops:
            target = folder / f"copy{i}" / p.parent.name / p.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(p.read_bytes())
    out, status = tmp_path / "emb.pkl", tmp_path / "status.json"
    args = ["--input", str(folder), "--model", str(testpack_dir), "--workers", "0", "--batch-size", "4",
            "--checkpoint-seconds", "3600", "-q", "--output", str(out)]  # no periodic checkpoint in this run
    script = ROOT / "scripts" / "generate_embeddings.py"
    proc = subprocess.Popen([sys.executable, str(script), *args, "--status-file", str(status)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, done = time.monotonic() + 120, 0
    while time.monotonic() < deadline and not done:  # the launcher's progress comes from this file
        assert proc.poll() is None, "the run ended before it could be stopped"
        done = json.loads(status.read_text())["done"] if status.exists() else 0
        time.sleep(0.02)
    assert 0 < done < 5 * len(crops)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Stopped by SIGTERM: progress so far is saved; re-run the same command to continue." in err
    assert "Traceback" not in err
    saved = [embfile.load(part) for part in parts_dir(out).glob("part-*.pkl")]
    held = sum(len(ef.rows) for ef in saved)
    assert 0 < held < 5 * len(crops)
    rerun = tmp_path / "rerun.txt"
    with open(rerun, "w") as log:
        assert subprocess.run([sys.executable, str(script), *args[:-3], "--output", str(out)], stdout=log).returncode == 0
    assert f"already embedded: {held:,}" in rerun.read_text()
    assert embfile.load(out).rows.paths == sorted(str(p) for p in folder.rglob("*.png"))


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"paths": [], "embeddings": _Exploit(marker), "meta": {}}))
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        embfile.load(evil)
    assert not marker.exists()


def test_a_file_of_the_users_own_embeddings_says_what_it_lacks(tmp_path: Path) -> None:
    # Embeddings from a script of one's own (insightface's normed_embedding of each face) with paths: "'meta' is
    # missing" said nothing of what would do.
    rng = np.random.default_rng(2)
    unit = rng.standard_normal((6, 512)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    own = {"paths": [f"/in/{i}.jpg" for i in range(6)], "embeddings": unit}
    (tmp_path / "own.pkl").write_bytes(pickle.dumps(own))
    with pytest.raises(EmbeddingsFileError, match=r"own.pkl: 'meta' is missing, so generate_embeddings did not write "
                                                  r"it; a file of your own is read with a 'meta' dict beside 'paths' "
                                                  r"and 'embeddings' \(an empty one will do"):
        embfile.load(tmp_path / "own.pkl")
    (tmp_path / "own.pkl").write_bytes(pickle.dumps({**own, "meta": {}}))  # as the message says
    loaded = embfile.load(tmp_path / "own.pkl")
    assert loaded.rows.paths == own["paths"] and np.array_equal(loaded.rows.embeddings, unit)
    assert loaded.rows.detected.all()


def test_files_of_either_pickle_protocol_load_alike(tmp_path: Path) -> None:
    """Files are written with protocol 5 (arrays straight from their memory); files written with
    protocol 4, as earlier releases did, load the same, and plain ``pickle.load`` reads both."""
    rng = np.random.default_rng(0)
    unit = rng.standard_normal((50, 128)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)  # as the format has them
    rows = FaceRows([f"/in/2017/f{i}.png" for i in range(50)], unit,
                    np.arange(50) % 2 == 0, rng.random(50).astype(np.float32), rng.random((50, 4)).astype(np.float32),
                    np.zeros(50, np.int32))
    ef = embfile.EmbeddingsFile(rows, [("/in/bad.png", "truncated JPEG")], [], {"embedding_size": 128})
    embfile.save(tmp_path / "new.pkl", ef)
    assert (tmp_path / "new.pkl").read_bytes()[:2] == b"\x80\x05"  # protocol 5
    (tmp_path / "old.pkl").write_bytes(pickle.dumps(embfile.to_dict(ef), protocol=4))
    for name in ("new.pkl", "old.pkl"):
        loaded = embfile.load(tmp_path / name)
        assert loaded.rows.paths == rows.paths and loaded.failed == ef.failed
        for column in ("embeddings", "detected", "det_score", "bbox", "face_index"):
            np.testing.assert_array_equal(getattr(loaded.rows, column), getattr(rows, column))
        assert loaded.rows.embeddings.flags.writeable
        with open(tmp_path / name, "rb") as handle:
            np.testing.assert_array_equal(pickle.load(handle)["embeddings"], rows.embeddings)


class _NumpyOneUnpickler(pickle.Unpickler):
    """``pickle.load`` as numpy 1.x does it, which has no ``numpy._core`` (and as a numpy without the
    deprecated ``numpy.core`` will)."""

    def find_class(self, module: str, name: str):
        if module.split(".")[:2] in (["numpy", "_core"], ["numpy", "core"]):
            raise ModuleNotFoundError(f"No module named '{module}'")
        return super().find_class(module, name)


def test_a_users_script_on_numpy_1_reads_the_file(tmp_path: Path) -> None:
    # numpy 2 pickles an array through numpy._core.numeric._frombuffer: a user's pickle.load on numpy 1.26
    # stopped with "No module named 'numpy._core.numeric'" (numpy/numpy#28340).
    rng = np.random.default_rng(1)
    rows = FaceRows(["/in/a.png", "/in/b.png", "/in/c.png"], rng.standard_normal((3, 128)).astype(np.float32),
                    np.array([True, False, True]), rng.random(3).astype(np.float32),
                    rng.random((3, 4)).astype(np.float32), np.array([0, 1, 0], np.int32))
    ef = embfile.EmbeddingsFile(rows, [], [], {"embedding_size": 128}, signatures={"/in/a.png": (12, 34)})
    embfile.save(tmp_path / "e.pkl", ef)
    with open(tmp_path / "e.pkl", "rb") as handle:
        plain = _NumpyOneUnpickler(handle).load()
    np.testing.assert_array_equal(plain["embeddings"], rows.embeddings)
    assert plain["embeddings"].dtype == np.float32 and plain["embeddings"].flags.writeable
    np.testing.assert_array_equal(plain["detected"], rows.detected)
    assert plain["detected"].dtype == bool and plain["face_index"].dtype == np.int32
    assert list(plain["file_signatures"]["size"]) == [12] and plain["file_signatures"]["mtime_ns"].dtype == np.int64
    empty = embfile.EmbeddingsFile(FaceRows.empty(128), [], ["/in/none.png"], {"embedding_size": 128})
    embfile.save(tmp_path / "empty.pkl", empty)
    with open(tmp_path / "empty.pkl", "rb") as handle:
        assert _NumpyOneUnpickler(handle).load()["embeddings"].shape == (0, 128)
    assert embfile.load(tmp_path / "empty.pkl").no_face == ["/in/none.png"]


def test_a_pattern_the_shell_left_as_it_was_is_expanded_by_the_stage(tmp_path, video_crops, testpack_dir,
                                                                      capsys) -> None:
    # docker exec face-organizer … --input /workspace/input/20*: the host's shell, which has no /workspace,
    # passes the pattern as typed, and the run stopped with "input folder not found: /workspace/input/20*".
    crops = sorted(p for c in video_crops.values() for p in c)[:6]
    for i, crop in enumerate(crops):
        write_image(tmp_path / "input" / f"20{17 + i % 2}" / f"frame_{i:04d}.png", read_image(crop))
    (tmp_path / "input" / "notes.txt").write_text("not an image folder")
    out, typed = tmp_path / "emb.pkl", str(tmp_path / "input" / "20*")
    assert run_cli(["--input", typed, "--output", str(out), "--model", str(testpack_dir)]) == 0
    years = [str(tmp_path / "input" / y) for y in ("2017", "2018")]
    err = capsys.readouterr().err
    assert f"INFO: --input {typed}: {years[0]}, {years[1]}\n" in err
    ef = embfile.load(out)
    assert ef.meta["inputs"] == years and len(ef.rows) == len(crops)
    assert run_cli(["--input", str(tmp_path / "nowhere" / "20*"), "--output", str(tmp_path / "e2.pkl"),
                    "--model", str(testpack_dir)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"Error: no input folder matches {tmp_path}/nowhere/20*"


def test_a_name_that_exists_is_never_taken_for_a_pattern(tmp_path) -> None:
    (tmp_path / "a*b").mkdir()
    (tmp_path / "a1b").mkdir()
    assert common.shell_patterns([str(tmp_path / "a*b")], "--input") == [str(tmp_path / "a*b")]
    assert common.shell_patterns([str(tmp_path / "a?b"), "plain"], "--input") == [
        str(tmp_path / "a*b"), str(tmp_path / "a1b"), "plain"]


def test_setup_errors_are_one_clear_line(tmp_path, testpack_dir, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert run_cli(["--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o.pkl")]) == 2
    assert run_cli(["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o.pkl")]) == 2
    write_image(tmp_path / "in" / "a.png", np.full((64, 64, 3), 128, np.uint8))
    assert run_cli(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o.pkl"),
                    "--model", "buffalo_l", "--model-root", str(tmp_path / "models"), "-q"]) == 2
    # (an attempted download may log first; each error itself is one line)
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("Error")]
    assert lines[0].startswith("Error: no images") and "input folder not found" in lines[1]
    assert lines[2].startswith("Error: model pack 'buffalo_l' not found") and "det_10g.onnx" in lines[2]
    assert len(lines) == 3
    assert run_cli(["--input", str(tmp_path / "in"), "--output", str(tmp_path), "--model", str(testpack_dir)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"Error: --output {tmp_path} is a folder; give a file name such as {tmp_path / 'embeddings_gpu0.pkl'}"]
    # A name ending in a slash means a folder, also one not made yet: no file of that name is written.
    meant = f"{tmp_path / 'embeddings'}/"
    assert run_cli(["--input", str(tmp_path / "in"), "--output", meant, "--model", str(testpack_dir)]) == 2
    inside = tmp_path / "embeddings" / "embeddings_gpu0.pkl"
    assert capsys.readouterr().err.strip().splitlines() == [
        f"Error: --output {meant} is a folder; give a file name such as {inside}"]
    assert not (tmp_path / "embeddings").exists()
    # Not a .pkl name: embedded all the same, with a warning that *.pkl patterns would leave the file out.
    assert run_cli(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "emb.txt"), "--model",
                    str(testpack_dir), "-q"]) == 0
    assert (f"WARNING: --output {tmp_path / 'emb.txt'} does not end in .pkl: embeddings files are pickles, and a "
            "pattern such as embeddings_gpu*.pkl given to cluster_faces would leave this one out") in capsys.readouterr().err
    assert embfile.load(tmp_path / "emb.txt").rows.paths == [str(tmp_path / "in" / "a.png")]


def test_device_cuda_without_gpu_exits_nonzero(tmp_path, testpack_dir, capsys) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has a CUDA build of ONNX Runtime")
    write_image(tmp_path / "in" / "a.png", np.full((64, 64, 3), 128, np.uint8))
    code = run_cli(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o.pkl"),
                    "--model", str(testpack_dir), "--device", "cuda"])
    assert code == 2 and "CUDAExecutionProvider" in capsys.readouterr().err


def test_auto_with_a_failing_cuda_plans_for_the_cpu(tmp_path, video_crops, testpack_dir, monkeypatch, capsys) -> None:
    """CUDA listed but failing its self-test: the run falls back and is planned as a CPU run
    (single-threaded streams, no decode processes), not as two all-core GPU streams."""
    from face_organizer.cli import embed as embed_cli
    from face_organizer.faces import load_face_models

    calls: list[tuple[str, int]] = []

    def fallback_load(pack, device, gpu_id, *, threads=0, **kwargs):
        calls.append((device, threads))
        # What open_session returns for 'auto' when the CUDA session fails: CPU sessions.
        return load_face_models(pack, "cpu", gpu_id, threads=threads, batch_size=kwargs.get("batch_size", 64))

    monkeypatch.setattr(embed_cli, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(embed_cli, "load_face_models", fallback_load)
    folder = tmp_path / "in"
    folder.mkdir()
    for src in next(iter(video_crops.values()))[:3]:
        (folder / Path(src).name).write_bytes(Path(src).read_bytes())
    crops = discover_images([folder])
    out = tmp_path / "o.pkl"
    assert run_cli(["--input", str(folder), "--output", str(out), "--model", str(testpack_dir)]) == 0
    streams, threads = plan_streams(True)
    assert calls == [("auto", 0), ("cpu", threads)]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "device: cpu" in last and (f"({streams} streams)" in last) == (streams > 1)
    assert embfile.load(out).rows.paths == sorted(crops)


def test_resume_refuses_other_mode(tmp_path, video_crops, models) -> None:
    from face_organizer.errors import SetupError

    crops = [str(p) for p in next(iter(video_crops.values()))[:2]]
    out = tmp_path / "emb.pkl"
    run_embeddings(crops, out, models)
    with pytest.raises(SetupError, match="photos mode"):
        run_embeddings(crops, out, models, EmbedOptions(mode="photos"))


def test_rerun_adds_the_unrecognisable_centre_to_an_older_file(tmp_path, video_crops, models) -> None:
    # Files made before the centre was recorded gain it from a re-run that embeds nothing again.
    from face_organizer import quality

    crops = [str(p) for p in next(iter(video_crops.values()))[:3]]
    out = tmp_path / "emb.pkl"
    run_embeddings(crops, out, models)
    with open(out, "rb") as handle:
        data = pickle.load(handle)
    centre = data["meta"].pop(quality.META_KEY)
    with open(out, "wb") as handle:
        pickle.dump(data, handle)
    summary = run_embeddings(crops, out, models)
    assert summary.embedded == 0 and summary.already_done == 3
    again = embfile.load(out)
    assert again.meta[quality.META_KEY] == centre
    np.testing.assert_array_equal(again.rows.embeddings, data["embeddings"])


def test_undetectable_image_falls_back_to_centre_crop(tmp_path, models) -> None:
    flat = write_image(tmp_path / "flat.png", np.full((200, 200, 3), 90, np.uint8))
    result = embed_batch([(str(flat), read_image(flat))], models, EmbedOptions())
    assert len(result.rows) == 1 and not result.rows.detected[0] and result.rows.det_score[0] == 0
    assert discover_images([tmp_path]) == [str(flat)]


def test_dead_decoder_process_costs_only_its_file(video_crops, tmp_path) -> None:
    import crashing_loader

    from face_organizer.decoding import iter_loaded

    good = [str(p) for c in video_crops.values() for p in c][:20]
    poison = tmp_path / "poison.png"
    poison.write_bytes(Path(good[0]).read_bytes())
    paths = good[:7] + [str(poison)] + good[7:]
    loaded = list(iter_loaded(paths, workers=2, chunk=4, loader=crashing_loader.load_many))
    assert [item.path for item in loaded] == paths
    assert all(item.image is not None for item in loaded if item.path != str(poison))
    dead = next(item for item in loaded if item.path == str(poison))
    assert dead.image is None and dead.reason == "decoder process crashed on this file"


def _decoding(paths: list[str], then: str, **popen: Any) -> tuple[subprocess.Popen, list[int]]:
    """A process decoding ``paths`` in two workers, and its child processes, once the first image
    is decoded; it then runs ``then``, which prints 'decoding' first."""
    script = (
        "import sys, time\n"
        "from face_organizer.decoding import iter_loaded\n"
        f"loaded = iter_loaded({paths!r}, workers=2, chunk=1)\n"
        "next(loaded)\n"
        + then
    )
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           **popen)
    try:
        assert run.stdout is not None and run.stdout.readline().strip() == "decoding"
        children = child_processes(run.pid)
        assert len(children) >= 2 and all(running(pid) for pid in children)  # the workers (and a resource tracker)
    except BaseException:
        run.kill()
        run.wait()
        raise
    return run, children


@needs_proc
def test_decoder_processes_end_with_a_run_killed_outright(video_crops) -> None:
    """kill -9 (or the OOM killer) gives the run no chance to stop its decoding processes;
    they must not wait on their queue for ever, holding memory and the run's output open."""
    run, children = _decoding([str(p) for c in video_crops.values() for p in c][:40],
                              "print('decoding', flush=True)\ntime.sleep(600)\n")
    run.kill()
    run.wait()
    for pipe in (run.stdout, run.stderr):  # reading them to the end would wait on any survivor
        assert pipe is not None
        pipe.close()
    assert not wait_gone(children), "processes outlived their run"


@needs_proc
@pytest.mark.parametrize("name", ["SIGINT", "SIGHUP", "SIGTERM"])
def test_stop_signals_to_the_process_group_are_left_to_the_run(video_crops, name) -> None:
    """Ctrl-C in a terminal, a hang-up, and ``timeout``'s SIGTERM reach every process of the
    group, also a worker still starting. The decoding processes leave them to the run (here it
    notes the signal and decodes on): none dies or prints a traceback of its own."""
    number = getattr(signal, name, None)
    if number is None:
        pytest.skip(f"no {name} here")
    paths = [str(p) for c in video_crops.values() for p in c]
    then = (f"import signal\ngot = []\nsignal.signal({int(number)}, lambda *args: got.append(args[0]))\n"
            "print('decoding', flush=True)\n"
            "print(1 + sum(item.image is not None for item in loaded), got)\n")
    run, children = _decoding(paths, then, start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.killpg(run.pid, number)
    try:
        out, err = run.communicate(timeout=120)  # a pool waiting for a lost result never ends
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert (run.returncode, out.strip()) == (0, f"{len(paths)} [{int(number)}]"), err
    assert "Traceback" not in err and "process died" not in err, err
    assert not wait_gone(children, 5)


def test_streams_write_the_same_file_as_one_stream(tmp_path, video_crops, models) -> None:
    folder, good = _good_and_bad(tmp_path, video_crops)
    paths = discover_images([folder])
    one = run_embeddings(paths, tmp_path / "one.pkl", models, batch_size=3, streams=1, progress=False)
    three = run_embeddings(paths, tmp_path / "three.pkl", models, batch_size=3, streams=3, progress=False)
    assert three.streams == 3 and three.embedded == one.embedded == len(good)
    a, b = embfile.load(tmp_path / "one.pkl"), embfile.load(tmp_path / "three.pkl")
    assert b.rows.paths == a.rows.paths == sorted(str(p) for p in good)
    np.testing.assert_allclose(b.rows.embeddings, a.rows.embeddings, atol=1e-5)
    assert b.failed == a.failed and len(b.failed) == 5


def test_an_image_that_breaks_its_batch_costs_only_itself(tmp_path, video_crops, models) -> None:
    paths = [str(p) for c in video_crops.values() for p in c][:9]
    broken = paths[4]

    def loader(chunk: list[str]) -> list[images.Loaded]:
        # A decoded image with no pixels makes the detector's resize raise inside embed_batch.
        return [images.Loaded(p, np.zeros((0, 0, 3), np.uint8)) if p == broken else images.load(p) for p in chunk]

    summary = run_embeddings(paths, tmp_path / "emb.pkl", models, batch_size=4, streams=2, loader=loader, progress=False)
    ef = embfile.load(tmp_path / "emb.pkl")
    assert ef.rows.paths == sorted(p for p in paths if p != broken)
    assert [p for p, _ in ef.failed] == [broken] and ef.failed[0][1].startswith("embedding failed: ")
    assert summary.embedded == 8 and sum(summary.skipped.values()) == 1


_GPU_OUT_OF_MEMORY = ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv "
                      "node.\n Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:376 "
                      "Failed to allocate memory for requested buffer of size 8388608")


def _recogniser_that_fails(models, fails, device: str = "cpu"):
    """``models`` whose recogniser raises ONNX Runtime's out-of-memory error where ``fails(faces, call)``
    (the faces of one call, its number from 1), on ``device`` as far as the run can tell."""
    recognizer, calls = copy.copy(models.recognizer), []

    def embed(faces):
        calls.append(len(faces))
        if fails(len(faces), len(calls)):
            raise RuntimeError(_GPU_OUT_OF_MEMORY)
        return type(recognizer).embed(recognizer, faces)

    recognizer.embed = embed
    failing = dataclasses.replace(models, recognizer=recognizer,
                                  reports=[dataclasses.replace(r, device=device) for r in models.reports])
    failing.__dict__["unrecognisable_centre"] = models.unrecognisable_centre  # worked out before the failures
    return failing, calls


def test_a_batch_too_large_for_the_gpu_is_embedded_in_halves(tmp_path, video_crops, models) -> None:
    # A GPU with little memory left (another run, TensorFlow beside it) failed every batch of 8 faces;
    # each image was then embedded alone, one call each. Halves that fit embed all, in fewer calls.
    paths = sorted(str(p) for c in video_crops.values() for p in c)[:16]
    small, calls = _recogniser_that_fails(models, lambda faces, call: faces > 2, device="cuda")
    summary = run_embeddings(paths, tmp_path / "halves.pkl", small, batch_size=8, streams=1, progress=False)
    run_embeddings(paths, tmp_path / "whole.pkl", models, batch_size=8, streams=1, progress=False)
    halves, whole = embfile.load(tmp_path / "halves.pkl"), embfile.load(tmp_path / "whole.pkl")
    assert summary.embedded == 16 and not halves.failed and halves.rows.paths == whole.rows.paths
    np.testing.assert_allclose(halves.rows.embeddings, whole.rows.embeddings, atol=1e-5)
    assert calls == [8, 4, 2, 2, 4, 2, 2] * 2  # against 8 + 1 per batch one image at a time


def test_crops_mode_says_how_many_images_showed_several_people(tmp_path, shared, video_crops, models) -> None:
    # A photo library run in the default crops mode embedded one face of each group photo, and said nothing.
    folder = tmp_path / "library"
    groups = [insightface_sample("t1.jpg"), *sorted((shared / "datasets" / "face_recognition_examples" /
                                                     "_multi_face").glob("*.jpg"))]
    for i, photo in enumerate(groups):
        write_image(folder / f"group_{i}.jpg", read_image(photo))
    crops = [p for c in video_crops.values() for p in c]
    for crop in crops:
        write_image(folder / "crops" / f"{crop.parent.name}_{crop.name}", read_image(crop))
    summary = run_embeddings(discover_images([folder]), tmp_path / "emb.pkl", models, batch_size=8, progress=False)
    assert summary.embedded == len(groups) + len(crops) and summary.several_faces == len(groups) == 4
    assert ("images showing another face about as large as the one embedded: 4 (crops mode embeds one face per "
            "image, the most central; --mode photos embeds every face)") in summary.lines()
    photos = run_embeddings(discover_images([folder]), tmp_path / "photos.pkl", models, EmbedOptions(mode="photos"),
                            progress=False)
    assert photos.several_faces == 0 and not any("another face" in line for line in photos.lines())


def _recogniser_giving_nan(models, device: str = "cpu", every: bool = False):
    """``models`` whose recogniser gives NaN for white faces (all of them with ``every``), as TensorRT's fp16
    does where a value overflows, on ``device`` as far as the run can tell."""
    recognizer = copy.copy(models.recognizer)

    def raw(faces):
        out = type(recognizer).raw(recognizer, faces)
        out[np.array([every or bool(f.min() == 255) for f in faces])] = np.nan
        return out

    recognizer.raw = raw
    nan = dataclasses.replace(models, recognizer=recognizer,
                              reports=[dataclasses.replace(r, device=device) for r in models.reports])
    nan.__dict__["unrecognisable_centre"] = models.unrecognisable_centre
    return nan


def test_an_embedding_that_is_not_a_number_is_a_failed_image(tmp_path, video_crops, models, caplog) -> None:
    # TensorRT's fp16 gives NaN where a value overflows: the row was stored, and FAISS then stopped
    # cluster_faces with a traceback ("input contains NaN's or Inf's").
    from face_organizer.cluster_stage import ClusterConfig, cluster_faces

    folder = copies_of(video_crops, tmp_path / "in", 1)
    write_image(folder / "white.png", np.full((256, 256, 3), 255, np.uint8))
    paths = discover_images([folder])
    summary = run_embeddings(paths, tmp_path / "emb.pkl", _recogniser_giving_nan(models), batch_size=8, streams=1,
                             progress=False)
    ef = embfile.load(tmp_path / "emb.pkl")
    assert ef.failed == [(str(folder / "white.png"), "embedding failed: NonFiniteEmbedding")]
    assert summary.embedded == len(paths) - 1 and np.isfinite(ef.rows.embeddings).all()
    assert cluster_faces(ef, str(tmp_path / "out"), ClusterConfig(clusters=2, previews=False), progress=False)
    # With a working recogniser, the same command embeds it.
    again = run_embeddings(paths, tmp_path / "emb.pkl", models, batch_size=8, streams=1, progress=False)
    assert again.embedded == 1 and not embfile.load(tmp_path / "emb.pkl").failed
    # A file written before runs checked: such a row is left out on reading, and embedded by the next run.
    data = pickle.loads((tmp_path / "emb.pkl").read_bytes())
    row = data["paths"].index(str(folder / "white.png"))
    data["embeddings"][row] = np.nan
    (tmp_path / "old.pkl").write_bytes(pickle.dumps(data))
    old = embfile.load(tmp_path / "old.pkl")
    assert old.failed == [(str(folder / "white.png"), "embedding failed: NonFiniteEmbedding")]
    assert len(old.rows) == len(paths) - 1 and np.isfinite(old.rows.embeddings).all()
    assert ("old.pkl: no usable embedding (NaN, infinity or zeros) for 1 face of 1 image: left out, and listed as "
            "failed, so that generate_embeddings embeds them again") in caplog.text
    assert run_embeddings(paths, tmp_path / "old.pkl", models, batch_size=8, streams=1, progress=False).embedded == 1
    assert np.isfinite(embfile.load(tmp_path / "old.pkl").rows.embeddings).all()
    # A user's own file of insightface's raw `embedding` (length about 20) is read normalised, as the format has it.
    data = pickle.loads((tmp_path / "emb.pkl").read_bytes())
    data["embeddings"] = data["embeddings"] * np.linspace(5, 30, len(paths), dtype=np.float32)[:, None]
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps(data))
    np.testing.assert_allclose(embfile.load(tmp_path / "raw.pkl").rows.embeddings,
                               embfile.load(tmp_path / "emb.pkl").rows.embeddings, atol=1e-6)
    assert "raw.pkl: its embeddings are not of unit length, as this format has them: normalised" in caplog.text


def test_a_recogniser_giving_only_nan_stops_the_run(tmp_path, video_crops, models, monkeypatch, caplog) -> None:
    monkeypatch.setattr(embed_run, "FAILING_IN_A_ROW", 8)
    paths = sorted(str(p) for c in video_crops.values() for p in c)[:16]
    nan = _recogniser_giving_nan(models, "tensorrt", every=True)
    del nan.__dict__["unrecognisable_centre"]  # worked out by the run, from blurred sample faces that give NaN too
    with pytest.raises(RunStopped) as stopped:
        run_embeddings(paths, tmp_path / "emb.pkl", nan, batch_size=4, streams=1, progress=False)
    assert ("blurred faces will not be set aside when clustering: the recogniser gave 48 of 48 embeddings as NaN, "
            "infinity or zeros") in caplog.messages
    assert str(stopped.value) == (
        "embedding failed for 8 images in a row (NonFiniteEmbedding: the recogniser gave 1 of 1 embeddings as NaN, "
        "infinity or zeros); the model overflows in TensorRT's fp16: run without --tensorrt. Progress is saved: run "
        "the same command again to go on from there")


def test_memory_running_out_is_told_from_other_failures() -> None:
    from face_organizer.errors import device_failed, one_line

    def advice(err: BaseException, device: str) -> str:
        return str(device_failed("embedding failed", one_line(err), device)).split("; ", 1)[1].split(".")[0]

    assert advice(MemoryError(), "cpu") == "the machine ran out of memory"
    assert advice(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED"), "cuda").startswith("the GPU ran out of memory")
    assert advice(RuntimeError("CUDA failure 999: unknown error"), "cuda") == "the GPU is failing, not the images"
    assert advice(RuntimeError("Got invalid dimensions for input"), "cpu") == "the model is failing, not the images"


@pytest.mark.parametrize(("device", "advice"), [
    ("cuda", "the GPU ran out of memory: stop other work on it (nvidia-smi lists what runs there) or give a smaller "
             "--batch-size"),
    ("cpu", "the machine ran out of memory"),
])
def test_a_device_that_stops_working_stops_the_run_with_its_progress_saved(tmp_path, video_crops, models, caplog,
                                                                          monkeypatch, device, advice) -> None:
    # Every image after the GPU failed was embedded alone, failed, and was listed as failed: a
    # half-million-image run "finished" with exit 0 and nearly every image skipped, and never said why.
    monkeypatch.setattr(embed_run, "FAILING_IN_A_ROW", 8)
    paths = sorted(str(p) for c in video_crops.values() for p in c)[:24]
    gone, calls = _recogniser_that_fails(models, lambda faces, call: call > 2, device=device)
    with pytest.raises(RunStopped) as stopped:
        run_embeddings(paths, tmp_path / "emb.pkl", gone, batch_size=4, streams=1, progress=False)
    assert stopped.value.exit_code == 1 and len(calls) < 2 + 2 * len(paths)
    assert str(stopped.value) == (
        "embedding failed for 8 images in a row (RuntimeError: [ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero "
        "status code returned while running Conv node. Status Message: /onnxruntime_src/onnxruntime/core/framework/"
        f"bfc_arena.cc:376 Failed to allocate memory for requested buffer of size 8388608); {advice}. Progress is "
        "saved: run the same command again to go on from there")
    assert f"could not embed {paths[8]}: RuntimeError: [ONNXRuntimeError]" in caplog.text  # said once, with why
    assert caplog.text.count("could not embed") == 1
    saved = embed_run.read_state(tmp_path / "emb.pkl")
    assert set(saved.held) == set(paths[:8])  # the two batches embedded before the failure are kept
    # Once the device works again, the same command embeds the rest, as a run that never failed would.
    summary = run_embeddings(paths, tmp_path / "emb.pkl", models, batch_size=4, streams=1, progress=False)
    run_embeddings(paths, tmp_path / "whole.pkl", models, batch_size=4, streams=1, progress=False)
    again, whole = embfile.load(tmp_path / "emb.pkl"), embfile.load(tmp_path / "whole.pkl")
    assert summary.already_done == 8 and summary.embedded == 16 and not again.failed
    assert again.rows.paths == whole.rows.paths
    np.testing.assert_allclose(again.rows.embeddings, whole.rows.embeddings, atol=1e-5)


def test_an_input_that_goes_away_part_way_stops_the_run_with_its_progress_saved(tmp_path, video_crops, models) -> None:
    # A drive unplugged (or a share or bind mount gone) mid-run: every image after it was listed as
    # 'file no longer exists', and the run exited 0 as if it had finished.
    folder = copies_of(video_crops, tmp_path / "in", 3)
    paths = discover_images([folder])
    calls = []

    def unplugged_after_two_batches(chunk: list[str]) -> list[images.Loaded]:
        calls.append(chunk)
        if len(calls) == 3:
            folder.rename(tmp_path / "unplugged")
        return images.load_many(chunk)

    with pytest.raises(RunStopped) as stopped:
        run_embeddings(paths, tmp_path / "emb.pkl", models, inputs=[str(folder)], batch_size=8, streams=1,
                       loader=unplugged_after_two_batches, progress=False)
    assert str(stopped.value) == (
        f"{folder} went away during the run: 32 images in a row could not be read (file no longer exists); it was "
        "unmounted, or its drive or network share disconnected. Progress is saved: when it is back, run the same "
        "command again to go on from there")
    assert stopped.value.exit_code == 1 and len(calls) <= 6 + 2 < len(paths) / 8  # and the batches read ahead
    assert set(embed_run.read_state(tmp_path / "emb.pkl").held) == set(paths[:16])
    (tmp_path / "unplugged").rename(folder)
    summary = run_embeddings(paths, tmp_path / "emb.pkl", models, inputs=[str(folder)], batch_size=8, streams=1,
                             progress=False)
    run_embeddings(paths, tmp_path / "whole.pkl", models, batch_size=8, streams=1, progress=False)
    again, whole = embfile.load(tmp_path / "emb.pkl"), embfile.load(tmp_path / "whole.pkl")
    assert summary.already_done == 16 and not again.failed and again.rows.paths == whole.rows.paths
    np.testing.assert_allclose(again.rows.embeddings, whole.rows.embeddings, atol=1e-5)


def test_files_deleted_during_a_run_from_an_input_still_there_are_listed_and_the_run_goes_on(tmp_path, video_crops,
                                                                                              models) -> None:
    folder = copies_of(video_crops, tmp_path / "in", 1)
    paths = discover_images([folder])
    deleted = [str(folder / "gone" / f"frame_{i:04d}.png") for i in range(40)]  # listed, then deleted
    summary = run_embeddings(paths + deleted, tmp_path / "emb.pkl", models, inputs=[str(folder)], batch_size=8,
                             streams=1, progress=False)
    ef = embfile.load(tmp_path / "emb.pkl")
    assert summary.embedded == len(paths) and summary.skipped == {"file no longer exists": 40}
    assert sorted(p for p, _ in ef.failed) == sorted(deleted)


@pytest.mark.parametrize(
    ("on_cpu", "streams", "threads", "cpus", "expected"),
    [
        (True, 0, 0, 2, (2, 1)),     # one single-threaded stream per core
        (True, 0, 0, 16, (16, 1)),
        (True, 0, 0, 64, (16, 4)),   # at most 16 by default: each stream holds a decoded batch
        (True, 4, 0, 16, (4, 4)),    # cores shared out among the streams asked for
        (True, 1, 0, 2, (1, 2)),
        (True, 0, 3, 2, (2, 3)),     # --threads wins
        (False, 0, 0, 16, (2, 0)),   # GPU: two streams overlap CPU work with inference
        (False, 1, 0, 16, (1, 0)),
    ],
)
def test_plan_streams(on_cpu, streams, threads, cpus, expected) -> None:
    assert plan_streams(on_cpu, streams, threads, cpus=cpus) == expected


def test_more_onnx_runtime_threads_than_cpus_are_warned_about(caplog) -> None:
    # On 2 CPUs, --threads 8 (say, the host's cores) embedded at a fifth of the speed, and nothing said why.
    with caplog.at_level(logging.WARNING):
        assert plan_streams(True, 0, 8, cpus=2) == (2, 8)
    assert ("2 streams x 8 threads (--streams, --threads) are more ONNX Runtime threads than the 2 CPUs this process "
            "may use: they stall each other") in caplog.text and caplog.text.rstrip().endswith("--threads 1 fits")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        plan_streams(True, 0, 0, cpus=2)  # the default
        plan_streams(True, 16, 0, cpus=2)  # single-threaded streams: the system shares the CPUs out between them
        plan_streams(True, 2, 4, cpus=8)
        plan_streams(False, 2, 8, cpus=2)  # a GPU run: its sessions run on the GPU
    assert caplog.text == ""


def test_photos_run_with_streams_and_decoders(tmp_path, models) -> None:
    folder = tmp_path / "library"
    for i in range(10):  # more photos than one photos job holds
        write_image(folder / f"album{i % 2}" / f"IMG_{i:04d}.jpg", read_image(insightface_sample("t1.jpg")))
    write_image(folder / "album0" / "wall.png", np.full((300, 400, 3), 120, np.uint8))
    paths = discover_images([folder])
    for workers in (0, 2):
        out = tmp_path / f"photos{workers}.pkl"
        summary = run_embeddings(paths, out, models, EmbedOptions(mode="photos"), workers=workers, streams=2, progress=False)
        ef = embfile.load(out)
        assert summary.faces == len(ef.rows) == 60 and summary.no_face == 1
        # Counted as photos: a photo without a face is not embedded centred, as a crop is.
        assert "embedded now: 10 images, 60 faces; photos without a face: 1" in summary.lines()
        assert not any("fallback" in line for line in summary.lines())
        assert ef.no_face == [str(folder / "album0" / "wall.png")]
        assert sorted(set(ef.rows.paths)) == sorted(p for p in paths if not p.endswith("wall.png"))
        assert all(ef.rows.face_index[np.array(ef.rows.paths) == p].tolist() == list(range(6)) for p in set(ef.rows.paths))


def test_a_folder_renamed_since_and_embedded_again_is_held_once_at_its_new_place(video_crops, testpack_dir,
                                                                                tmp_path, capsys) -> None:
    """A year folder renamed (or moved) since, and the same loop run over it at its new place: each image took its
    rows there as a copy, but the file kept it at its old path too, so clustering and search found every image
    twice and called half of them missing. The old paths are dropped where the image is found at a new one and is
    gone from the old; an image deleted since stays, and so does one whose old path holds it still (a copy)."""
    old, new = tmp_path / "input" / "2017", tmp_path / "input" / "2017 interviews"
    for i, crop in enumerate(p for person in video_crops.values() for p in person[:3]):
        write_image(old / f"frame_{i:04d}.png", read_image(crop))
    command = ["--input", str(old), "--output", str(tmp_path / "emb.pkl"), "--model", str(testpack_dir), "-q"]
    assert run_cli(command) == 0
    before = embfile.load(tmp_path / "emb.pkl")
    old.rename(new)
    (new / "frame_0000.png").unlink()  # deleted since: no new path holds it
    old.mkdir()
    shutil.copy2(new / "frame_0001.png", old / "frame_0001.png")  # its old path holds it still: a copy, kept
    capsys.readouterr()
    # A dry run tells the moved images by name, size and time: not counted to embed, nor as not found.
    assert run_cli([*command[:1], str(new), *command[2:], "--dry-run"]) == 0
    planned = capsys.readouterr().out
    assert "images found: 8; already embedded: 0\nto embed: 1 image\n" in planned
    assert "held in the file but not found under the inputs now: 2 images" in planned
    assert ("moved since embedded, or named through a linked folder now (the same name and size at a new path under "
            "the inputs, and the old path gone or the same file): 7 images; they would keep their rows") in planned
    assert run_cli([*command[:1], str(new), *command[2:]]) == 0
    printed = capsys.readouterr().out
    assert ("moved since embedded, named through a linked folder now, or a copy deleted (the same bytes found at "
            "another path under the inputs, and the old path gone or the same file): 7 images; the file names them "
            "only where they are now") in printed
    assert "held in the file but not found under the inputs now: 2 images" in printed
    ef = embfile.load(tmp_path / "emb.pkl")
    assert sorted(ef.rows.paths) == sorted([str(old / "frame_0000.png"), str(old / "frame_0001.png"),
                                            *(str(new / f"frame_{i:04d}.png") for i in range(1, 9))])
    kept = {p: i for i, p in enumerate(before.rows.paths)}
    for i, path in enumerate(ef.rows.paths):  # the rows each image had, to the last bit, wherever it is now
        np.testing.assert_array_equal(ef.rows.embeddings[i], before.rows.embeddings[kept[str(old / Path(path).name)]])
    assert set(ef.signatures) == set(ef.digests) == set(ef.rows.paths)  # the old paths' own dropped with them


def test_a_folder_named_through_a_linked_folder_since_is_held_once_under_the_path_used_now(video_crops, testpack_dir,
                                                                                         tmp_path, capsys) -> None:
    """The year folders embedded by their own paths, then one of them named through a symbolically linked folder
    (a mount point reached by a link): each image took its rows as a copy of itself, and the file held it under
    both paths, so clustering placed every image twice. The path it is found at now replaces the old one, also
    for a file that is itself a link (a copy of another under its own name); the other year stays as it was."""
    media = tmp_path / "media"
    crops = [p for person in video_crops.values() for p in person[:3]]
    for i, crop in enumerate(crops):
        write_image(media / ("2017" if i < 6 else "2018") / f"frame_{i:04d}.png", read_image(crop))
    (media / "2017" / "frame_9999.png").symlink_to(media / "2017" / "frame_0000.png")
    out = tmp_path / "emb.pkl"
    common_args = ["--output", str(out), "--model", str(testpack_dir), "-q"]
    assert run_cli(["--input", str(media / "2017"), str(media / "2018"), *common_args]) == 0
    before = embfile.load(out)
    workspace = tmp_path / "workspace"
    workspace.symlink_to(media, target_is_directory=True)
    capsys.readouterr()
    assert run_cli(["--input", str(workspace / "2017"), *common_args, "--dry-run"]) == 0
    planned = capsys.readouterr().out
    assert "images found: 7; already embedded: 0\nto embed: 0 images\n" in planned
    assert "or named through a linked folder now (the same name and size at a new path under the inputs, and the " \
           "old path gone or the same file): 7 images" in planned
    assert run_cli(["--input", str(workspace / "2017"), *common_args]) == 0
    assert ("or a copy deleted (the same bytes found at another path under the inputs, and the old path gone or the "
            "same file): 7 images") in capsys.readouterr().out
    ef = embfile.load(out)
    renamed = {str(media / "2017" / Path(p).name): p for p in ef.rows.paths if p.startswith(str(workspace))}
    assert sorted(ef.rows.paths) == sorted(renamed.get(p, p) for p in before.rows.paths)  # each image once
    assert len(renamed) == 7 and all(p.startswith(str(media / "2018")) for p in ef.rows.paths if p not in
                                     renamed.values())
    row = {p: i for i, p in enumerate(ef.rows.paths)}
    for i, path in enumerate(before.rows.paths):  # the rows each image had, to the last bit
        np.testing.assert_array_equal(ef.rows.embeddings[row[renamed.get(path, path)]], before.rows.embeddings[i])


def test_copies_of_an_image_take_its_rows_instead_of_being_embedded_again(video_crops, models, tmp_path,
                                                                         monkeypatch) -> None:
    """An album folder of copies (the same bytes under other names) beside the year folder: each copy takes the
    rows of the image it repeats, to the last bit, without going through detection and recognition, also a copy
    in the same batch as its image (as `photo (1).jpg` beside `photo.jpg` is). Decoding processes give the
    digest too."""
    crops = [p for person in video_crops.values() for p in person[:6]]
    year, album = tmp_path / "in" / "2017", tmp_path / "in" / "album"
    for i, crop in enumerate(crops):
        write_image(year / f"frame_{i:04d}.png", read_image(crop))
    originals = sorted(discover_images([year]))
    for path in originals[:4]:  # the first batch: recorded before the album's batches start, whatever the streams do
        album.mkdir(exist_ok=True)
        (album / f"copy of {Path(path).name}").write_bytes(Path(path).read_bytes())
    copies = sorted(discover_images([album]))
    sent: list[str] = []
    real = embed_run.embed_batch
    monkeypatch.setattr(embed_run, "embed_batch",
                        lambda batch, *a, **k: sent.extend(p for p, _ in batch) or real(batch, *a, **k))
    for workers in (0, 1):  # one stream: the first batch is recorded before the album's batch is submitted
        sent.clear()
        out = tmp_path / f"emb{workers}.pkl"
        summary = run_embeddings(sorted([*originals, *copies]), out, models, inputs=[str(tmp_path / "in")],
                                 workers=workers, batch_size=4, streams=1, progress=False)
        assert summary.copies == len(copies) and summary.embedded == len(originals) + len(copies)
        assert sorted(sent) == originals  # no copy was detected or recognised
        ef = embfile.load(out)
        row = {p: i for i, p in enumerate(ef.rows.paths)}
        assert sorted(row) == sorted([*originals, *copies])
        for copied in copies:
            original = str(year / Path(copied).name.removeprefix("copy of "))
            for column in (ef.rows.embeddings, ef.rows.detected, ef.rows.det_score, ef.rows.bbox):
                np.testing.assert_array_equal(column[row[copied]], column[row[original]])
        assert set(ef.signatures) == set(row)  # each copy's own file, for the next run
    # A copy in the same batch as its image: embedded once too.
    for workers in (0, 1):
        sent.clear()
        one = tmp_path / f"one{workers}.pkl"
        again = run_embeddings([originals[0], copies[0]], one, models, workers=workers, batch_size=4, progress=False)
        assert again.copies == 1 and again.embedded == 2 and sent == [originals[0]]
        ef = embfile.load(one)
        assert ef.rows.paths == [originals[0], copies[0]]
        np.testing.assert_array_equal(ef.rows.embeddings[0], ef.rows.embeddings[1])
    # A copy whose batch started while its image's batch was in flight (two streams, its image's embedding
    # slow): embedded, but recorded with its image's rows, as a GPU may embed the two a little apart.
    def slow_and_apart(batch, *a, **k):
        if batch[0][0] == originals[0]:
            time.sleep(0.5)
        result = real(batch, *a, **k)
        sent.extend(p for p, _ in batch)
        result.rows.embeddings[[p in copies for p in result.rows.paths]] += 1e-3
        return result

    monkeypatch.setattr(embed_run, "embed_batch", slow_and_apart)
    sent.clear()
    apart = run_embeddings([originals[0], copies[0]], tmp_path / "apart.pkl", models, batch_size=1, streams=2,
                           progress=False)
    assert apart.copies == 1 and apart.embedded == 2 and sorted(sent) == sorted([originals[0], copies[0]])
    ef = embfile.load(tmp_path / "apart.pkl")
    assert ef.rows.paths == [originals[0], copies[0]]
    np.testing.assert_array_equal(ef.rows.embeddings[0], ef.rows.embeddings[1])
    # Its image failing to embed (here: the recogniser failing for it), the copy fails with it, for the next run.
    def failing(batch, *a, **k):
        if any(p == originals[0] for p, _ in batch):
            raise RuntimeError("CUDA failure 700: an illegal memory access was encountered")
        return real(batch, *a, **k)

    monkeypatch.setattr(embed_run, "embed_batch", failing)
    lost = run_embeddings([originals[0], originals[1], copies[0]], tmp_path / "lost.pkl", models, batch_size=4,
                          progress=False)
    assert lost.copies == 0 and lost.embedded == 1 and lost.skipped == {"embedding failed: RuntimeError": 2}
    assert sorted(embfile.load(tmp_path / "lost.pkl").failed) == sorted(
        [(originals[0], "embedding failed: RuntimeError"), (copies[0], "embedding failed: RuntimeError")])


def test_copies_of_images_an_earlier_run_embedded_take_their_rows(video_crops, models, tmp_path, monkeypatch) -> None:
    """The file keeps a digest of each image's bytes: a later run (new album folders beside the year folders, or
    the same run resumed after a stop) gives a copy of an image the file holds that image's rows, without
    embedding it. An image rewritten since is not copied from: its rows were of other bytes."""
    crops = [p for person in video_crops.values() for p in person[:3]]
    year, album = tmp_path / "in" / "2017", tmp_path / "in" / "album"
    for i, crop in enumerate(crops):
        write_image(year / f"frame_{i:04d}.png", read_image(crop))
    originals = sorted(discover_images([year]))
    out = tmp_path / "emb.pkl"
    first = run_embeddings(originals, out, models, batch_size=4, progress=False)
    assert first.embedded == len(originals)
    d = pickle.loads(out.read_bytes())  # the plain dict a user's script reads
    assert d["content_digests"]["paths"] == originals
    assert d["content_digests"]["blake2b_128"].shape == (len(originals), 16)
    before = embfile.load(out)
    assert before.digests == {p: images.content_digest(Path(p).read_bytes()) for p in originals}
    # Later: an album of copies of three of them, one of which has been rewritten since, with the bytes of another.
    album.mkdir()
    for path in originals[:3]:
        (album / f"copy of {Path(path).name}").write_bytes(Path(path).read_bytes())
    rewritten = originals[2]
    Path(rewritten).write_bytes(Path(originals[-1]).read_bytes())
    os.utime(rewritten, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    copies = sorted(discover_images([album]))
    sent: list[str] = []
    real = embed_run.embed_batch
    monkeypatch.setattr(embed_run, "embed_batch",
                        lambda batch, *a, **k: sent.extend(p for p, _ in batch) or real(batch, *a, **k))
    later = run_embeddings(sorted([*originals, *copies]), out, models, batch_size=4, streams=2, progress=False)
    stale = str(album / f"copy of {Path(rewritten).name}")  # of bytes the file no longer holds: embedded
    assert later.changed == 1 and later.copies == 3 and sent == [stale]  # the rewritten image is a copy too
    ef = embfile.load(out)
    row = {p: i for i, p in enumerate(ef.rows.paths)}
    assert sorted(row) == sorted([*originals, *copies])
    for copied, source in ((copies[0], originals[0]), (copies[1], originals[1]), (rewritten, originals[-1])):
        np.testing.assert_array_equal(ef.rows.embeddings[row[copied]], ef.rows.embeddings[row[source]])
    np.testing.assert_array_equal(ef.rows.embeddings[row[stale]], before.rows.embeddings[2])
    assert ef.digests[rewritten] == ef.digests[originals[-1]] and set(ef.digests) == set(row)
    # A run stopped after its first batch and resumed: the checkpoint keeps the digests too.
    shutil.rmtree(album)
    (album / "more").mkdir(parents=True)
    for path in originals[:2]:  # of the first batch, which one stream records before the album's batch is read
        (album / "more" / Path(path).name).write_bytes(Path(path).read_bytes())
    more = sorted(discover_images([album]))
    fresh = tmp_path / "fresh.pkl"
    interrupted_at(sorted([*originals, *more]), more[0], fresh, models, batch_size=4)
    checkpoints = [embfile.load(part) for part in sorted(parts_dir(fresh).glob("part-*.pkl"))]
    assert all(set(part.digests) == set(part.rows.paths) for part in checkpoints) and checkpoints
    sent.clear()
    resumed = run_embeddings(sorted([*originals, *more]), fresh, models, batch_size=4, progress=False)
    assert resumed.copies >= len(more) and not set(sent) & set(more)
    ef = embfile.load(fresh)
    row = {p: i for i, p in enumerate(ef.rows.paths)}
    for copied in more:
        np.testing.assert_array_equal(ef.rows.embeddings[row[copied]],
                                      ef.rows.embeddings[row[str(year / Path(copied).name)]])


def test_a_copied_photo_takes_every_face_it_has_or_its_having_none(models, tmp_path) -> None:
    """Photos mode: the copy of a group photo takes all its faces (boxes and face numbers), the copy of a photo
    without a face is one too."""
    import skimage.data

    group = tmp_path / "in" / "2017" / "t1.jpg"
    group.parent.mkdir(parents=True)
    group.write_bytes(insightface_sample("t1.jpg").read_bytes())
    empty = write_image(tmp_path / "in" / "2017" / "coffee.png", skimage.data.coffee()[:, :, ::-1])
    album = tmp_path / "in" / "z album"
    album.mkdir()
    (album / "t1.jpg").write_bytes(group.read_bytes())
    (album / "coffee.png").write_bytes(empty.read_bytes())
    paths = [str(group), str(empty), str(album / "t1.jpg"), str(album / "coffee.png")]
    summary = run_embeddings(sorted(paths), tmp_path / "e.pkl", models, EmbedOptions(mode="photos"), batch_size=1,
                             streams=1, progress=False)
    ef = embfile.load(tmp_path / "e.pkl")
    assert summary.copies == 2 and summary.no_face == 2 and summary.faces == 12
    assert sorted(ef.no_face) == sorted([str(empty), str(album / "coffee.png")])
    ours, theirs = (np.asarray([p == str(f) for p in ef.rows.paths]) for f in (group, album / "t1.jpg"))
    assert ours.sum() == theirs.sum() == 6
    np.testing.assert_array_equal(ef.rows.face_index[ours], ef.rows.face_index[theirs])
    np.testing.assert_array_equal(ef.rows.bbox[ours], ef.rows.bbox[theirs])
    np.testing.assert_array_equal(ef.rows.embeddings[ours], ef.rows.embeddings[theirs])
