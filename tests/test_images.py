from __future__ import annotations

import io
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from face_organizer import images
from face_organizer.images import NOT_A_FILE, READ_FORMATS, DecodeError, decode_bytes, discover_images, load, read_image

from conftest import ROOT, png_claiming, write_image


def _face_like(h: int = 64, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_discovery_rules(tmp_path: Path) -> None:
    img = _face_like()
    keep = [
        write_image(tmp_path / "2017" / "frame_0001.png", img),
        write_image(tmp_path / "2017" / "nested" / "deeper" / "UPPER.JPG", img),
        write_image(tmp_path / "2017" / "spaced name é.jpeg", img),
        write_image(tmp_path / "2008" / "frame_0001.png", img),
        write_image(tmp_path / "2008" / "x.webp", img),
        write_image(tmp_path / "2008" / "y.BMP", img),
        write_image(tmp_path / "2008" / "z.tif", img),
    ]
    write_image(tmp_path / "2017" / ".hidden.png", img)
    (tmp_path / "2017" / "._frame_0001.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "2017" / ".git").mkdir()
    write_image(tmp_path / "2017" / ".git" / "inside_hidden.png", img)
    (tmp_path / "2017" / "album.jpg").mkdir()
    write_image(tmp_path / "2017" / "album.jpg" / "inner.png", img)
    (tmp_path / "2017" / "notes.txt").write_text("not an image")
    os.symlink(keep[0], tmp_path / "2008" / "link.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "2008" / "dangling.png")  # listed, to be reported when read
    os.symlink(tmp_path / "gone", tmp_path / "2008" / "dangling_notes.txt")
    found = discover_images([tmp_path / "2017", tmp_path / "2008", tmp_path / "2017"])
    expected = sorted(
        [str(p) for p in keep]
        + [str(tmp_path / "2017" / "album.jpg" / "inner.png"), str(tmp_path / "2008" / "link.png"),
           str(tmp_path / "2008" / "dangling.png")]
    )
    assert found == expected
    assert str(tmp_path / "2017" / "album.jpg") not in found


def test_a_folder_reached_twice_gives_its_images_once_under_one_path(tmp_path: Path, monkeypatch) -> None:
    # input/latest -> 2017 (a link kept beside the year folders), and the same year named again
    # through another link: each image once, under the same path whatever order folders are listed in.
    img = _face_like()
    images = [write_image(tmp_path / "input" / "2017" / "sub" / f"frame_{i}.png", img) for i in range(3)]
    os.symlink(tmp_path / "input" / "2017", tmp_path / "input" / "latest")
    os.symlink(tmp_path / "input" / "2017", tmp_path / "input" / "0_first")  # listed before 2017 by name
    os.symlink(tmp_path / "input" / "2017", tmp_path / "y2017")
    outside = write_image(tmp_path / "elsewhere" / "only_by_link.png", img)
    os.symlink(outside.parent, tmp_path / "input" / "extra")  # a folder reached only through a link is kept
    expected = sorted([str(p) for p in images] + [str(tmp_path / "input" / "extra" / "only_by_link.png")])
    real_scandir = os.scandir
    for backwards in (False, True):
        monkeypatch.setattr(os, "scandir", lambda path, backwards=backwards: iter(
            sorted(real_scandir(path), key=lambda entry: entry.name, reverse=backwards)))
        assert discover_images([tmp_path / "input", tmp_path / "y2017"]) == expected
        assert discover_images([tmp_path / "input" / "2017", tmp_path / "input"]) == expected
        # The input named first gives the path: here the link, as the user typed it.
        assert discover_images([tmp_path / "y2017", tmp_path / "input" / "2017"]) == [
            str(tmp_path / "y2017" / "sub" / p.name) for p in images]


def test_thumbnails_and_recycle_bins_of_a_nas_or_a_drive_are_left_out(tmp_path: Path, caplog) -> None:
    # A photo library on a Synology NAS holds five thumbnails of every photo in @eaDir folders, and a USB
    # drive used on Windows its deleted photos in $RECYCLE.BIN: each was embedded as a face of its own.
    img = _face_like()
    kept = [write_image(tmp_path / "2019" / "IMG_0001.jpg", img), write_image(tmp_path / "eaDir" / "a.jpg", img)]
    for junk in ("2019/@eaDir/IMG_0001.jpg/SYNOPHOTO_THUMB_XL.jpg", "2019/@eaDir/IMG_0001.jpg/SYNOPHOTO_THUMB_M.jpg",
                 "#recycle/IMG_0002.jpg", "$RECYCLE.BIN/S-1-5-21/$RABC123.jpg", "$Recycle.Bin/$R1.png",
                 "System Volume Information/x.jpg", "nextcloud/files_trashbin/files/Holiday.d1700000000/IMG_0003.jpg"):
        write_image(tmp_path / junk, img)
    kept.append(write_image(tmp_path / "nextcloud" / "files" / "Photos" / "IMG_0004.jpg", img))
    with caplog.at_level("INFO"):
        assert discover_images([tmp_path]) == sorted(str(p) for p in kept)
    assert ("left out 6 folders that a NAS or an operating system keeps (thumbnails, recycle bins: #recycle: 1, "
            "$RECYCLE.BIN: 1, $Recycle.Bin: 1, @eaDir: 1, System Volume Information: 1, files_trashbin: 1)"
            ) in caplog.messages
    # Named as an input itself, such a folder is read: the user asked for it.
    assert discover_images([tmp_path / "#recycle"]) == [str(tmp_path / "#recycle" / "IMG_0002.jpg")]


def test_an_apple_photos_library_gives_each_photo_once(tmp_path: Path, caplog) -> None:
    # A Photos library copied from a Mac is a folder: besides each photo as imported (originals/), resources/ holds
    # resized copies of it and its edited version, each of which was embedded as another face of the same person.
    img = _face_like()
    library = tmp_path / "Pictures" / "Photos Library.photoslibrary"
    kept = [write_image(library / "originals" / "4" / "4A1B-UUID.jpeg", img),
            write_image(library / "originals" / "F" / "F0C2-UUID.png", img),
            write_image(tmp_path / "Pictures" / "scan.jpg", img)]
    for copy in ("resources/derivatives/4/4A1B-UUID_1_105_c.jpeg", "resources/renders/4/4A1B-UUID_1_201_a.jpeg",
                 "resources/derivatives/masters/4/4A1B-UUID_4_5005_c.jpeg", "private/com.apple.photoanalysisd/x.jpg",
                 "scopes/cloudsharing/data/a.jpg"):
        write_image(library / copy, img)
    older = tmp_path / "Old.PhotosLibrary"  # a library from before Photos 5 keeps them in Masters/
    kept += [write_image(older / "Masters" / "2014" / "IMG_0001.JPG", img)]
    write_image(older / "Thumbnails" / "2014" / "IMG_0001.jpg", img)
    # So do the libraries of iPhoto 9 and Aperture, with previews (edited versions) and thumbnails beside them.
    iphoto, aperture = tmp_path / "iPhoto Library.photolibrary", tmp_path / "Aperture Library.aplibrary"
    for old in (iphoto, aperture):
        kept.append(write_image(old / "Masters" / "2011" / "07" / "04" / "20110704-121314" / "IMG_0002.JPG", img))
        write_image(old / "Previews" / "2011" / "07" / "04" / "20110704-121314" / "IMG_0002.jpg", img)
        write_image(old / "Thumbnails" / "2011" / "07" / "04" / "20110704-121314" / "IMG_0002.jpg", img)
    with caplog.at_level("INFO"):
        assert discover_images([tmp_path / "Pictures", older, iphoto, aperture]) == sorted(str(p) for p in kept)
    assert (f"{library}, {older}, {iphoto} and 1 more: Apple photo libraries (Photos, iPhoto or Aperture), of which "
            "only the photos as imported (originals/, Masters/) are read; the rest (resources/, Previews/, "
            "Thumbnails/) holds resized copies and edited versions of the same photos") in caplog.messages
    assert discover_images([library]) == sorted(str(p) for p in kept[:2])  # the library named itself
    # A folder of it named as an input is read as it is: the user asked for it.
    renders = library / "resources" / "renders"
    assert discover_images([renders]) == [str(renders / "4" / "4A1B-UUID_1_201_a.jpeg")]


def test_the_images_photo_servers_make_of_the_photos_are_left_out(tmp_path: Path, caplog) -> None:
    # Photo servers keep previews and thumbnails of every photo beside the photos (Immich also its face crops):
    # each was embedded as one more face of the person. Laid out as each server's documentation describes.
    img = _face_like()
    media, data, storage = tmp_path / "immich", tmp_path / "nextcloud" / "data", tmp_path / "photoprism" / "storage"
    kept = [write_image(media / "library" / "admin" / "2023" / "IMG_0001.jpg", img),
            write_image(media / "upload" / "5f3e-uuid" / "ab" / "cd" / "abcd-uuid.jpg", img),
            write_image(data / "alice" / "files" / "Photos" / "IMG_0002.jpg", img),
            write_image(tmp_path / "photoprism" / "originals" / "2024" / "05" / "IMG_0003.jpg", img),
            write_image(storage / "sidecar" / "2024" / "05" / "DSC_0004.NEF.jpg", img)]  # a raw photo's only JPEG
    for made in ("thumbs/5f3e-uuid/ab/cd/abcd-uuid-preview.jpeg", "thumbs/5f3e-uuid/ab/cd/abcd-uuid-thumbnail.webp",
                 "thumbs/5f3e-uuid/9f/01/9f01-person.jpeg", "profile/5f3e-uuid/me.jpg"):
        write_image(media / made, img)
    (media / "encoded-video" / "5f3e-uuid").mkdir(parents=True)
    for made in ("preview/1/2/3/4/5/6/7/1234567/1024-768-max.jpg", "preview/1/2/3/4/5/6/7/1234567/256-192.jpg",
                 "avatar/alice/avatar.512.png"):
        write_image(data / "appdata_oc5x7yq2" / made, img)
    (data / ".ocdata").write_text("# Nextcloud data directory\n")
    for made in ("cache/thumbnails/a/b/c/abc123_720x720_fit.jpg", "cache/thumbnails/a/b/c/abc123_tile_224.jpg"):
        write_image(storage / made, img)
    kept.append(write_image(tmp_path / "mine" / "thumbs" / "small.jpg", img))  # folders of the user's named so
    kept.append(write_image(tmp_path / "mine" / "cache" / "small.jpg", img))
    with caplog.at_level("INFO"):
        assert discover_images([tmp_path]) == sorted(str(p) for p in kept)
    assert (f"{media}: the media folder of Immich, whose thumbs/ and profile/ are left out (the previews, thumbnails "
            "and face crops that Immich made of the photos, and its users' pictures)") in caplog.messages
    assert (f"{data}: the data folder of Nextcloud, whose appdata_* folder is left out (the previews that Nextcloud "
            "made of the photos, in several sizes, and its users' pictures)") in caplog.messages
    assert (f"{storage}: the storage folder of PhotoPrism, whose cache/ is left out (the thumbnails that PhotoPrism "
            "made of the photos, in several sizes)") in caplog.messages
    assert len(discover_images([media / "thumbs"])) == 3  # named as an input, read
    assert len(discover_images([data / "appdata_oc5x7yq2"])) == 3
    # Two of one server: said in one line.
    caplog.clear()
    write_image(tmp_path / "immich2" / "library" / "a.jpg", img)
    (tmp_path / "immich2" / "thumbs").mkdir()
    (tmp_path / "immich2" / "encoded-video").mkdir()
    with caplog.at_level("INFO"):
        discover_images([media, tmp_path / "immich2"])
    assert [m for m in caplog.messages if "Immich" in m] == [
        f"{media}, {tmp_path / 'immich2'}: media folders of Immich, whose thumbs/ and profile/ are "
        "left out (the previews, thumbnails and face crops that Immich made of the photos, and its users' pictures)"]


def test_what_discovery_leaves_out_is_named(tmp_path: Path, monkeypatch, caplog) -> None:
    # A photo library holds formats not read here (JPEG XL, camera raw files), and a folder
    # may not be readable: both are said, not left out silently; other files are no concern.
    img = _face_like()
    kept = write_image(tmp_path / "2019" / "a.jpg", img)
    for name in ("IMG_0001.JXL", "IMG_0002.jxl", "DSC_0003.NEF", "DSC_0004.dng", "frame_0005.TGA"):
        (tmp_path / "2019" / name).write_bytes(b"\0" * 16)
    (tmp_path / "2019" / "movie.mov").write_bytes(b"\0" * 16)
    (tmp_path / "2019" / "notes.txt").write_text("x")
    locked = tmp_path / "2019" / "private"
    write_image(locked / "b.jpg", img)
    real_scandir = os.scandir

    def scandir(path):  # root reads every folder, so the refusal is simulated
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    caplog.set_level("WARNING")
    assert discover_images([tmp_path]) == [str(kept)]
    assert f"cannot read folder {locked} (Permission denied): its images are left out" in caplog.text
    assert "left out 5 photos in formats not read here (.jxl: 2; .dng: 1; .nef: 1; .tga: 1)" in caplog.text
    assert ".mov" not in caplog.text and ".txt" not in caplog.text
    caplog.clear()
    monkeypatch.setattr(os, "scandir", real_scandir)
    discover_images([locked])
    assert not caplog.text  # nothing left out, nothing said


def test_videos_among_the_inputs_are_counted(tmp_path: Path, caplog) -> None:
    # The crops this tool sorts are extracted from videos; pointed at the videos themselves, the run said only
    # "no images found".
    for name in ("interview.mp4", "b-roll.MKV", "2017/clip.mov"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"\0" * 16)
    with caplog.at_level("INFO"):
        assert discover_images([tmp_path]) == []
    assert ("left out 3 videos (.mkv: 1; .mov: 1; .mp4: 1): face-organizer reads images; extract the frames or face "
            "crops from them first") in caplog.messages
    # An iPhone's Live Photos: the photo (read) and its motion, a .MOV of the same name.
    caplog.clear()
    library = tmp_path / "iphone"
    for stem in ("IMG_0001", "IMG_0002"):
        write_image(library / f"{stem}.JPG", _face_like())
        (library / f"{stem}.MOV").write_bytes(b"\0" * 16)
    with caplog.at_level("INFO"):
        assert len(discover_images([library])) == 2
    assert ("left out 2 videos (.mov: 2), each the motion of a Live Photo beside its photo, which is read"
            in caplog.messages)
    caplog.clear()
    with caplog.at_level("INFO"):
        discover_images([tmp_path])
    assert ("left out 5 videos (.mov: 3; .mkv: 1; .mp4: 1; 2 of them the motion of a Live Photo beside its photo, "
            "which is read): face-organizer reads images; extract the frames or face crops from them first"
            in caplog.messages)


def test_missing_input_folder(tmp_path: Path, caplog) -> None:
    with pytest.raises(FileNotFoundError, match="input folder not found"):
        discover_images([tmp_path / "nope"])
    with pytest.raises(FileNotFoundError, match=r"^no input folder matches .*/nope/20\*$"):
        discover_images([tmp_path / "nope" / "20*"])  # a pattern nothing matched, left as it was
    # A named pipe given as an input (a pattern matched it) holds no image: left out, not "not found".
    os.mkfifo(tmp_path / "pipe.png")
    write_image(tmp_path / "in" / "a.png", _face_like())
    with caplog.at_level("WARNING"):
        assert discover_images([tmp_path / "pipe.png", tmp_path / "in"]) == [str(tmp_path / "in" / "a.png")]
    assert f"{tmp_path / 'pipe.png'} is neither a file nor a folder: left out" in caplog.text
    # Files named as inputs that are not images: said, where they were left out without a word (an archive
    # of the year's frames, a list meant for --file-list, a photo in another format).
    caplog.clear()
    for name in ("2017.tar.gz", "list.txt", "IMG_1.JXL"):
        (tmp_path / name).write_bytes(b"x")
    with caplog.at_level("WARNING"):
        assert discover_images([tmp_path / "in", *(tmp_path / n for n in ("2017.tar.gz", "list.txt", "IMG_1.JXL"))]
                               ) == [str(tmp_path / "in" / "a.png")]
    assert caplog.messages == [f"{tmp_path / '2017.tar.gz'} is an archive: left out (unpack it and name the folder)",
                               f"{tmp_path / 'list.txt'} is not an image (jpg, jpeg, jfif, png, webp, bmp, tif, "
                               "ppm, pgm, heic, avif, gif, jp2): left out",
                               "left out 1 photo in formats not read here (.jxl: 1); convert them to JPEG or PNG to "
                               "include them"]


def test_an_input_folder_that_holds_no_image_beside_others_that_do_is_named(tmp_path: Path, caplog) -> None:
    # A year folder a move emptied, or one mounted empty, among others: before, only its absence from the count told.
    write_image(tmp_path / "2019" / "a.png", _face_like())
    for name in ("2017", "2018/sub"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "2018" / "sub" / "clip.mp4").write_bytes(b"x")
    inputs = [tmp_path / "2017", tmp_path / "2019", tmp_path / "2018"]
    with caplog.at_level("WARNING"):
        assert discover_images(inputs) == [str(tmp_path / "2019" / "a.png")]
    assert caplog.messages == [f"no images ({READ_FORMATS}) found under {tmp_path / '2017'} and {tmp_path / '2018'}: "
                               "nothing is read from them"]
    caplog.clear()
    with caplog.at_level("WARNING"):  # where none holds one, the stage says so itself
        assert discover_images([tmp_path / "2017"]) == discover_images([tmp_path / "2017", tmp_path / "2018"]) == []
        assert discover_images([tmp_path / "2019", tmp_path / "2019" / "a.png"]) == [str(tmp_path / "2019" / "a.png")]
    assert not caplog.messages


def test_jpeg_photos_under_the_names_windows_gave_them_are_read(tmp_path: Path) -> None:
    # Browsers on Windows saved JPEG pictures as .jfif for years: such photos were passed over without a word.
    img = _face_like()
    names = ("saved.jfif", "SAVED2.JFIF", "old.jpe")
    for name in names:
        (tmp_path / name).write_bytes(write_image(tmp_path / "a.jpg", img).read_bytes())
    (tmp_path / "a.jpg").unlink()
    assert discover_images([tmp_path]) == sorted(str(tmp_path / n) for n in names)
    assert all(load(str(tmp_path / n)).reason is None for n in names)


def test_netpbm_frames_as_ffmpeg_writes_them_are_read(tmp_path: Path) -> None:
    # `ffmpeg -i clip.mp4 frame_%04d.ppm` writes Netpbm frames: they were passed over without a word.
    base = _gradient()
    grey = cv2.cvtColor(base, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "frame_0001.ppm"), base)
    cv2.imwrite(str(tmp_path / "frame_0002.PGM"), grey)
    cv2.imwrite(str(tmp_path / "frame_0003.pgm"), grey.astype(np.uint16) * 257)  # 16-bit
    (tmp_path / "frame_0004.pnm").write_bytes((tmp_path / "frame_0001.ppm").read_bytes())
    assert (tmp_path / "frame_0001.ppm").read_bytes()[:2] == b"P6"
    assert (tmp_path / "frame_0002.PGM").read_bytes()[:2] == b"P5"
    names = ["frame_0001.ppm", "frame_0002.PGM", "frame_0003.pgm", "frame_0004.pnm"]
    assert discover_images([tmp_path]) == [str(tmp_path / n) for n in names]
    np.testing.assert_array_equal(read_image(tmp_path / "frame_0001.ppm"), base)
    np.testing.assert_array_equal(read_image(tmp_path / "frame_0004.pnm"), base)
    for name in names[1:3]:
        np.testing.assert_array_equal(read_image(tmp_path / name), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))


def test_jpeg2000_photos_are_read(tmp_path: Path) -> None:
    # JPEG 2000 (scanned photo archives, macOS) was counted as a format not read here and left out.
    from PIL import Image

    base = _gradient()
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(np.ascontiguousarray(base[:, :, ::-1])).save(scans / "1994_001.JP2", "JPEG2000")  # lossless
    Image.fromarray(np.ascontiguousarray(base[:, :, ::-1])).save(scans / "1994_002.j2k", "JPEG2000")
    deep = (base[:, :, 1].astype(np.uint16) * 257)  # a 16-bit grey scan
    Image.fromarray(deep).save(scans / "1994_003.jp2", "JPEG2000")
    assert (scans / "1994_001.JP2").read_bytes()[4:8] == b"jP  "  # the file format
    assert (scans / "1994_002.j2k").read_bytes()[:2] == b"\xffO"  # the bare codestream
    assert discover_images([tmp_path]) == [str(scans / n) for n in ("1994_001.JP2", "1994_002.j2k", "1994_003.jp2")]
    np.testing.assert_array_equal(read_image(scans / "1994_001.JP2"), base)
    np.testing.assert_array_equal(read_image(scans / "1994_002.j2k"), base)
    np.testing.assert_array_equal(read_image(scans / "1994_003.jp2"), np.dstack([base[:, :, 1]] * 3))
    data = (scans / "1994_001.JP2").read_bytes()
    (tmp_path / "cut.jp2").write_bytes(data[: len(data) // 2])
    assert load(str(tmp_path / "cut.jp2")).reason == "not a decodable image (corrupt, truncated or not an image)"


def test_decoding_variants(tmp_path: Path) -> None:
    base = _face_like(40, 50)
    grey = cv2.cvtColor(base, cv2.COLOR_BGR2GRAY)
    deep = (base.astype(np.uint16) * 257)
    alpha = np.dstack([base, np.full((40, 50), 255, np.uint8)])
    for name, image in {"grey.png": grey, "deep.png": deep, "alpha.png": alpha, "plain.jpg": base}.items():
        out = read_image(write_image(tmp_path / name, image))
        assert out.shape == (40, 50, 3) and out.dtype == np.uint8, name
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png"), base)
    np.testing.assert_array_equal(read_image(tmp_path / "alpha.png"), base)


def test_bad_files_give_reasons(tmp_path: Path, monkeypatch) -> None:
    good = write_image(tmp_path / "good.jpg", _face_like(120, 120))
    data = good.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a jpeg")
    png = write_image(tmp_path / "good.png", _face_like(120, 120)).read_bytes()
    (tmp_path / "cut.png").write_bytes(png[:200])
    os.symlink(tmp_path / "unmounted" / "frame.png", tmp_path / "on_nas.png")
    (tmp_path / "bomb.png").write_bytes(png_claiming(40_000, 40_000))  # 1.6 gigapixels in 100 bytes
    reasons = {p.name: load(str(p)).reason for p in tmp_path.iterdir()}
    assert reasons["bomb.png"].startswith("image too large to decode (over OpenCV's pixel limit")
    assert reasons["on_nas.png"] == "broken symbolic link (its target is missing)"
    assert reasons["good.jpg"] is None and reasons["good.png"] is None
    assert reasons["truncated.jpg"] == "truncated JPEG"
    assert reasons["empty.png"] == "empty file"
    assert "not a decodable image" in (reasons["text.jpg"] or "")
    assert "not a decodable image" in (reasons["cut.png"] or "")
    # A broken HEIC photo (here under a .jpg name, as some transfer tools keep one): said as such, not as a JPEG.
    heic = bytes.fromhex("00000018 66747970 68656963 00000000 6d696631 68656963".replace(" ", ""))
    (tmp_path / "IMG_0001.jpg").write_bytes(heic + bytes(4000))
    assert load(str(tmp_path / "IMG_0001.jpg")).reason.startswith("not a decodable HEIC photo (libheif: ")
    monkeypatch.setattr(images, "_HEIF", None)  # an environment without pi-heif: what it cannot read, said so
    assert load(str(tmp_path / "IMG_0001.jpg")).reason == "a HEIC photo, not read here (convert it to JPEG or PNG)"


def _saved_turned(path: Path, bgr: np.ndarray, kind: str, orientation: int) -> Path:
    """``bgr`` saved by Pillow as ``kind``; with ``orientation`` 6 stored turned a quarter left, with the rotation
    (the file's irot) that shows it upright, as phones do."""
    from PIL import Image

    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = np.ascontiguousarray(np.rot90(rgb, 1)) if orientation == 6 else rgb
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        Image.fromarray(stored).save(handle, format=kind, quality=95, exif=exif.tobytes())
    return path


def _gradient() -> np.ndarray:
    """A 60 x 90 BGR image whose top and left tell apart: any turn or mirroring shows."""
    rows, cols = np.mgrid[0:60, 0:90]
    return np.dstack([rows * 4, cols * 2, 255 - rows * 4]).astype(np.uint8)


def _all_read_upright(base: np.ndarray, paths: Sequence[Path], root: Path) -> None:
    """Each of ``paths`` decodes as ``base`` (lossy, but upright and in BGR order), and they are the images
    found under ``root``."""
    for path in paths:
        image = read_image(path)
        assert image.shape == base.shape and image.dtype == np.uint8, path
        assert np.abs(image.astype(int) - base.astype(int)).mean() < 4, path
    assert discover_images([root]) == sorted(str(p) for p in paths)


def _heic(path: Path, bgr: np.ndarray, orientation: int = 1) -> Path:
    """``bgr`` written as a HEIC photo (pillow-heif's encoder; face-organizer has only the decoder)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    return _saved_turned(path, bgr, "HEIF", orientation)


def test_heic_photos_are_read_upright(tmp_path: Path) -> None:
    # iPhones save HEIC; they were counted as "formats not read here" and left out.
    base = _gradient()
    plain = _heic(tmp_path / "2019" / "IMG_0001.HEIC", base)
    turned = _heic(tmp_path / "2019" / "IMG_0002.heic", base, orientation=6)
    renamed = tmp_path / "2019" / "IMG_0003.jpg"  # a transfer tool's .jpg name on HEIC bytes
    renamed.write_bytes(plain.read_bytes())
    camera = tmp_path / "2019" / "IMG_0004.HIF"  # as Canon's and Fujifilm's cameras name HEIF
    camera.write_bytes(plain.read_bytes())
    assert plain.read_bytes()[4:12] == b"ftypheic"
    _all_read_upright(base, (plain, turned, renamed, camera), tmp_path)
    cut = tmp_path / "cut.heic"
    cut.write_bytes(plain.read_bytes()[: len(plain.read_bytes()) // 2])
    assert load(str(cut)).reason.startswith("not a decodable HEIC photo (libheif: ")


def _avif(path: Path, bgr: np.ndarray, orientation: int = 1) -> Path:
    """``bgr`` written as an AVIF photo by Pillow's encoder."""
    return _saved_turned(path, bgr, "AVIF", orientation)


def test_avif_photos_are_read_upright(tmp_path: Path, monkeypatch) -> None:
    # AVIF (some Android phones, pictures saved from the web) was counted as a format not read here and left
    # out; OpenCV 5's own AVIF decoder would show a turned one as stored.
    from PIL import Image

    base = _gradient()
    plain = _avif(tmp_path / "2024" / "PXL_0001.AVIF", base)
    turned = _avif(tmp_path / "2024" / "PXL_0002.avif", base, orientation=6)
    assert b"irot" in turned.read_bytes() and b"irot" not in plain.read_bytes()
    renamed = tmp_path / "2024" / "saved.jpg"  # AVIF bytes under a .jpg name, as browsers save some pictures
    renamed.write_bytes(plain.read_bytes())
    # AVIF whose major brand is the general 'mif1', AVIF among its compatible brands (as some encoders write)
    data = plain.read_bytes()
    size = int.from_bytes(data[:4], "big")
    general = tmp_path / "2024" / "general.avif"
    general.write_bytes(data[:8] + b"mif1" + data[12:16] + b"avif" + data[20:size] + data[size:])
    assert data[4:12] == b"ftypavif" and general.read_bytes()[4:12] == b"ftypmif1"
    both = (28).to_bytes(4, "big") + b"ftypmif1" + bytes(4) + b"mif1avifheic"  # HEIC too: libheif's to read
    assert images._iso_photo_kind(both) == "HEIF" and images._iso_photo_kind(general.read_bytes()) == "AVIF"
    _all_read_upright(base, (plain, turned, renamed, general), tmp_path)
    cut = tmp_path / "cut.avif"
    cut.write_bytes(data[: len(data) - 40])
    assert load(str(cut)).reason == "not a decodable AVIF photo (Pillow: Failed to decode frame 0: Truncated data)"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(data[:64] + bytes(2000))
    assert load(str(broken)).reason.startswith("not a decodable AVIF photo (Pillow: ")
    # With alpha: composited over black, as a PNG's is.
    rgba = np.dstack([base, np.full(base.shape[:2], 128, np.uint8)])
    see_through = tmp_path / "alpha.avif"
    Image.fromarray(np.ascontiguousarray(rgba[:, :, [2, 1, 0, 3]])).save(see_through, format="AVIF", quality=95)
    assert np.abs(read_image(see_through).astype(int) - base.astype(int) * 128 // 255).mean() < 4
    # A Pillow without an AVIF decoder: such a photo is said to be one, not a broken file.
    monkeypatch.setattr(images, "_AVIF", None)
    monkeypatch.setattr(images.cv2, "imdecode", lambda *a: None)  # and an OpenCV without one (OpenCV 4 wheels)
    assert load(str(renamed)).reason == "an AVIF photo, not read here (convert it to JPEG or PNG)"
    assert load(str(general)).reason == "an AVIF photo, not read here (convert it to JPEG or PNG)"


def test_gif_animations_are_read_by_their_first_frame(tmp_path: Path) -> None:
    # Photo libraries keep GIF animations beside the photos (Google Photos makes them of bursts): they were
    # counted as a format not read here. The first frame is read; a transparent colour is black, as in a PNG.
    from PIL import Image

    base = _gradient()
    first, second = Image.fromarray(base[:, :, ::-1].copy()), Image.fromarray(255 - base[:, :, ::-1])
    animation = tmp_path / "Photos from 2019" / "20190704_burst.GIF"
    animation.parent.mkdir()
    first.save(animation, save_all=True, append_images=[second], duration=100, loop=0)
    image = read_image(animation)
    assert image.shape == base.shape and np.abs(image.astype(int) - base.astype(int)).mean() < 6  # 256 colours
    see_through = tmp_path / "sticker.gif"
    palette = first.quantize(64)
    palette.save(see_through, transparency=int(np.asarray(palette)[0, 0]))
    assert (read_image(see_through)[0, 0] == 0).all() and read_image(see_through)[59, 89].any()
    assert discover_images([tmp_path]) == sorted(str(p) for p in (animation, see_through))
    cut = tmp_path / "cut.gif"
    cut.write_bytes(animation.read_bytes()[:300])
    assert load(str(cut)).reason.startswith("not a decodable GIF (Pillow: ")
    # A screen of 60,000 x 60,000 pixels in a few bytes: refused before any pixel is allocated, as OpenCV does.
    header = bytearray(see_through.read_bytes())
    header[6:10] = struct.pack("<HH", 60_000, 60_000)
    bomb = tmp_path / "bomb.gif"
    bomb.write_bytes(bytes(header))
    assert load(str(bomb)).reason == ("image too large to decode (60000x60000, over OpenCV's pixel limit; "
                                      "OPENCV_IO_MAX_IMAGE_PIXELS raises it)")


def test_opencv_does_not_log_the_files_it_cannot_decode(tmp_path: Path) -> None:
    # OpenCV 5 wrote "[ERROR:0@1.4] global loadsave.cpp:1377 imdecode_ … can't read header" on stderr for
    # each broken file, between the progress lines, though the run lists each with its reason. A user's own
    # OPENCV_LOG_LEVEL still rules.
    import subprocess
    import sys

    if getattr(cv2.utils, "logging", None) is None:
        pytest.skip("this OpenCV build has no logging to quieten")  # OpenCV 4 wheels: nothing is logged either
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\0")
    code = f"from face_organizer.images import load; print(load({str(tmp_path / 'cut.png')!r}).reason)"
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert quiet.stdout.startswith("not a decodable image") and quiet.stderr == ""
    told = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**env, "OPENCV_LOG_LEVEL": "ERROR"})
    assert told.stdout == quiet.stdout and "[ERROR:" in told.stderr


def test_a_link_named_like_an_image_to_a_pipe_or_a_device_is_skipped_without_reading_it(tmp_path: Path) -> None:
    # A link to a pipe waited at open() for a writer that never came, and the run never ended; one to
    # /dev/zero would have read until memory ran out (checked with /dev/null: an "empty file" before).
    os.mkfifo(tmp_path / "pipe")
    os.symlink(tmp_path / "pipe", tmp_path / "frame_0001.png")
    os.symlink(os.devnull, tmp_path / "frame_0002.png")
    assert discover_images([tmp_path]) == [str(tmp_path / "frame_0001.png"), str(tmp_path / "frame_0002.png")]
    found: list = []
    reader = threading.Thread(target=lambda: found.extend(load(str(p)) for p in discover_images([tmp_path])),
                              daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # let the blocked open() return, so that no thread is left behind
        os.close(os.open(tmp_path / "pipe", os.O_WRONLY | os.O_NONBLOCK))
    assert [(x.image, x.reason) for x in found] == [(None, NOT_A_FILE)] * 2
    assert NOT_A_FILE == "not a regular file (a device, a pipe or a socket, named like an image)"


def test_tiny_image_rejected() -> None:
    ok, data = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DecodeError, match="too small"):
        decode_bytes(data.tobytes())


# EXIF orientation -> how the stored pixels relate to the upright picture (np.rot90 turns anticlockwise).
STORED = {3: lambda a: np.rot90(a, 2), 6: lambda a: np.rot90(a, 1), 8: lambda a: np.rot90(a, -1),
          2: np.fliplr, 5: lambda a: np.rot90(np.fliplr(a), 1)}


def _save_with_orientation(path: Path, stored: np.ndarray, orientation: int) -> Path:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    mode = "RGBA" if stored.shape[2] == 4 else "RGB"
    rgb = stored[:, :, [2, 1, 0, 3][: stored.shape[2]]]
    options = {"quality": 95} if path.suffix == ".jpg" else {"lossless": True} if path.suffix == ".webp" else {}
    Image.fromarray(np.ascontiguousarray(rgb), mode).save(path, exif=exif.tobytes(), **options)
    return path


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
@pytest.mark.parametrize("orientation", sorted(STORED))
def test_photos_stored_sideways_are_read_upright(tmp_path: Path, suffix: str, orientation: int) -> None:
    from face_organizer.samples import insightface_sample

    upright = read_image(insightface_sample("t1.jpg"))[:200, :300]
    path = _save_with_orientation(tmp_path / f"photo{suffix}", STORED[orientation](upright), orientation)
    got = read_image(path)
    assert got.shape == upright.shape
    if suffix == ".jpg":  # lossy
        assert np.abs(got.astype(int) - upright).mean() < 3
    else:
        np.testing.assert_array_equal(got, upright)


def test_a_webps_orientation_is_read_from_its_exif_chunk() -> None:
    # OpenCV 4 does not apply a WebP's orientation (OpenCV 5 does): sideways photos stayed on their side.
    from face_organizer import exif

    def tiff(order: bytes, orientation: int) -> bytes:
        e = "<" if order == b"II" else ">"
        entry = struct.pack(e + "HHI", 0x0112, 3, 1) + struct.pack(e + "H", orientation) + b"\0\0"
        make = struct.pack(e + "HHII", 0x010F, 2, 1, 0)  # another tag before it
        return order + struct.pack(e + "HI", 42, 8) + struct.pack(e + "H", 2) + make + entry + b"\0\0\0\0"

    def webp(*chunks: tuple[bytes, bytes]) -> bytes:
        body = b"".join(name + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1) for name, data in chunks)
        return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body

    for order in (b"II", b"MM"):
        assert exif.webp_orientation(webp((b"VP8X", b"\x08" + b"\0" * 9), (b"VP8L", b"x" * 5),
                                          (b"EXIF", tiff(order, 6)))) == 6
        assert exif.tiff_orientation(b"Exif\0\0" + tiff(order, 8)) == 8  # with the JPEG-style prefix
    assert exif.webp_orientation(webp((b"VP8L", b"xx"))) == 1  # none
    assert exif.webp_orientation(webp((b"EXIF", tiff(b"II", 6)[:20]))) == 1  # cut short
    assert exif.webp_orientation(webp((b"EXIF", tiff(b"II", 9)))) == 1  # no such orientation
    assert exif.webp_orientation(webp((b"EXIF", b"garbage"))) == 1
    stored = np.arange(6).reshape(2, 3)
    turns = {**STORED, 4: np.flipud, 7: lambda a: np.rot90(np.fliplr(a), -1), 1: lambda a: a}
    for orientation, turn in turns.items():  # each orientation undoes the turn it names
        assert np.array_equal(exif.upright(turn(stored), orientation), stored), orientation


def test_a_sideways_png_with_alpha_is_turned_upright_alpha_and_all(tmp_path: Path) -> None:
    upright = np.dstack([_face_like(40, 50), np.tile(np.linspace(0, 255, 50).astype(np.uint8), (40, 1))])
    path = _save_with_orientation(tmp_path / "alpha.png", STORED[6](upright), 6)
    composited = ((upright[:, :, :3].astype(np.uint16) * upright[:, :, 3:] + 127) // 255).astype(np.uint8)
    np.testing.assert_array_equal(read_image(path), composited)


def test_sorted_copies_inside_an_input_are_not_embedded_twice(tmp_path: Path, caplog) -> None:
    frame = write_image(tmp_path / "input" / "2017" / "frame_0001.png", _face_like())
    clustered = tmp_path / "input" / "clustered"  # a cluster_faces --output put inside the input folder
    write_image(clustered / "person_A" / "2017" / "frame_0001.png", _face_like())
    (clustered / ".face-organizer-plan.json").write_text("{}")
    with caplog.at_level("WARNING"):
        assert discover_images([tmp_path / "input"]) == [str(frame)]
    assert f"skipping {clustered}" in caplog.text
    # Asked for by name, its images are embedded; its contact sheets are not images of the collection.
    for sheet in ("person_A.jpg", "person_AB.jpg", "outliers.jpg", "matches.jpg"):
        write_image(clustered / "previews" / sheet, _face_like())
    with caplog.at_level("INFO"):
        assert discover_images([clustered]) == [str(clustered / "person_A" / "2017" / "frame_0001.png")]
    assert "left out 4 contact sheets that face-organizer made in the previews/ folders of its outputs" in caplog.text
    # A folder of outputs only (gender_filter --output faces_female/$YEAR for each year) is embedded whole.
    female = tmp_path / "faces_female"
    kept = [write_image(female / year / "2017" / "frame_0001.png", _face_like()) for year in ("2017", "2018")]
    for year in ("2017", "2018"):
        (female / year / ".face-organizer-plan.json").write_text("{}")
    write_image(female / "2017" / "previews" / "outliers.jpg", _face_like())  # a search output's sheet beside them
    (female / "2017" / "matches.csv").write_text("path\n")
    # An input folder named like the sheets' keeps its images in an output: only the sheets' names are left out.
    kept.append(write_image(female / "2018" / "previews" / "frame_0002.png", _face_like()))
    assert discover_images([female]) == sorted(str(p) for p in kept)


def test_an_image_too_large_for_the_machine_is_skipped_not_fatal(tmp_path: Path, monkeypatch) -> None:
    # A photo within OpenCV's pixel limit can still need more memory than a container has.
    from face_organizer import images

    path = write_image(tmp_path / "big.png", np.zeros((20, 20, 3), np.uint8))

    def exhausted(data: bytes, reduction: int = 1) -> np.ndarray:
        raise MemoryError

    monkeypatch.setattr(images, "decode_bytes", exhausted)
    loaded = images.load(str(path))
    assert loaded.image is None and loaded.reason == "out of memory while decoding (image too large for this machine)"
    assert loaded.signature is not None  # read, so a later run knows the file was already tried


def test_an_opencv_exception_on_one_file_is_its_reason(tmp_path: Path, monkeypatch) -> None:
    # Some files make OpenCV raise instead of returning nothing; the file is skipped with OpenCV's words.
    from face_organizer import images

    path = write_image(tmp_path / "odd.png", np.zeros((20, 20, 3), np.uint8))

    def raising(buffer, flags):
        raise cv2.error("OpenCV(5.0.0) /io/opencv/modules/imgcodecs/src/grfmt_png.cpp:1: error: (-2:Unspecified error) bad chunk in function 'readData'\n")

    monkeypatch.setattr(images.cv2, "imdecode", raising)
    loaded = images.load(str(path))
    assert loaded.image is None and loaded.reason is not None
    assert loaded.reason.startswith("not a decodable image (OpenCV: OpenCV(5.0.0)")
    assert "bad chunk in function 'readData'" in loaded.reason and "\n" not in loaded.reason


def test_exif_in_a_png_is_found_by_its_chunk_wherever_it_is(tmp_path: Path) -> None:
    from face_organizer.images import _png_has_exif

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    plain = cv2.imencode(".png", _face_like())[1].tobytes()
    assert not _png_has_exif(plain)
    end = plain.rindex(b"IEND") - 4
    exif = chunk(b"eXIf", b"MM\x00*\x00\x00\x00\x08\x00\x00")
    assert _png_has_exif(plain[:33] + exif + plain[33:])  # before the pixels, where writers put it
    assert _png_has_exif(plain[:end] + exif + plain[end:])  # after them: allowed, and still found
    # Bytes spelling the name inside another chunk are not a chunk: no second decode for them.
    assert not _png_has_exif(plain[:33] + chunk(b"tEXt", b"Comment\x00eXIf") + plain[33:])
    sideways = _save_with_orientation(tmp_path / "photo.png", STORED[6](_face_like()), 6)
    assert _png_has_exif(sideways.read_bytes())  # as Pillow writes it


def test_the_size_of_a_jpeg_is_read_from_its_header_to_shrink_large_ones_while_decoding(shared, tmp_path) -> None:
    from PIL import Image

    def jpeg(width: int, height: int, **options: Any) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (width, height), (90, 120, 150)).save(out, "JPEG", **options)
        return out.getvalue()

    assert images.jpeg_size(jpeg(640, 480)) == (640, 480)
    assert images.jpeg_size(jpeg(640, 480, progressive=True)) == (640, 480)
    out = io.BytesIO()
    Image.new("CMYK", (33, 17)).save(out, "JPEG")
    assert images.jpeg_size(out.getvalue()) == (33, 17)
    for photo in sorted((shared / "datasets" / "face_recognition_examples").rglob("*.jpg")):
        data = photo.read_bytes()
        assert images.jpeg_size(data) == Image.open(photo).size, photo
    assert images.jpeg_size(jpeg(640, 480)[:100]) is None  # cut off before its frame header
    assert images.jpeg_size(b"\x89PNG\r\n\x1a\n") is None
    def claiming(width: int, height: int) -> bytes:
        """A small JPEG whose frame header claims ``width`` x ``height``: all that ``jpeg_reduction`` reads."""
        data = bytearray(jpeg(64, 64))
        start = data.index(b"\xff\xc0")
        data[start + 5 : start + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
        return bytes(data)

    # As far as the longer side stays 2,000 pixels, by 2, 4 or 8 only.
    widths = {3999: 1, 4000: 2, 7999: 2, 8000: 4, 16000: 8, 40000: 8}
    assert {w: images.jpeg_reduction(claiming(w, w // 2), 2000) for w in widths} == widths
    assert images.jpeg_reduction(claiming(6000, 8000), 2000) == 4  # a portrait's longer side
    assert images.jpeg_reduction(claiming(8000, 6000), 0) == 1
    # A panorama's faces are detected in tiles of its shorter side: that is the side kept.
    assert {size: images.jpeg_reduction(claiming(*size), 2000) for size in [(16000, 1000), (16000, 4000),
                                                                          (40000, 8000), (3000, 16000)]} == {
        (16000, 1000): 1, (16000, 4000): 2, (40000, 8000): 4, (3000, 16000): 1}
    png = cv2.imencode(".png", np.zeros((8, 8000, 3), np.uint8))[1].tobytes()
    assert images.jpeg_reduction(png, 2000) == 1  # other formats are decoded whole
    # A header claiming more pixels than OpenCV's limit is refused as too large, not decoded shrunk.
    claims = bytearray(jpeg(64, 64))
    start = claims.index(b"\xff\xc0")
    claims[start + 5 : start + 9] = (50000).to_bytes(2, "big") * 2
    assert images.jpeg_size(bytes(claims)) == (50000, 50000) and images.jpeg_reduction(bytes(claims), 2000) == 1
    (tmp_path / "huge.jpg").write_bytes(claims)
    assert (images.load(str(tmp_path / "huge.jpg"), 2000).reason or "").startswith("image too large to decode")


def test_a_jpeg_decoded_shrunk_is_turned_as_its_exif_orientation_says() -> None:
    """Each of the eight orientations: the shrunk decode is the whole decode shrunk (OpenCV applies the tag to
    ``IMREAD_REDUCED_COLOR_*`` too), for progressive, grey and CMYK JPEGs as well."""
    from PIL import Image

    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 4000)[None, :, None] * np.ones((48, 1, 3))
    picture = Image.fromarray(np.clip(gradient + rng.normal(0, 8, gradient.shape), 0, 255).astype(np.uint8))
    picture.paste((255, 0, 0), (0, 0, 400, 24))  # a red block in one corner: a turn or a mirror moves it

    def jpeg(image: Any, orientation: int = 1, **options: Any) -> bytes:
        exif = Image.Exif()
        exif[0x0112] = orientation
        out = io.BytesIO()
        image.save(out, "JPEG", exif=exif.tobytes(), quality=95, **options)
        return out.getvalue()

    cases = [jpeg(picture, o) for o in range(1, 9)]
    cases += [jpeg(picture, 6, progressive=True), jpeg(picture.convert("L"), 3), jpeg(picture.convert("CMYK"), 8)]
    for data in cases:
        assert images.jpeg_size(data) == (4000, 48)  # as stored: what jpeg_reduction reads
        whole, shrunk = images.decode_bytes(data), images.decode_bytes(data, 2)
        assert shrunk.shape == (-(-whole.shape[0] // 2), -(-whole.shape[1] // 2), 3)
        expected = cv2.resize(whole, shrunk.shape[1::-1], interpolation=cv2.INTER_AREA)
        assert np.abs(expected.astype(int) - shrunk.astype(int)).mean() < 3


def test_contact_sheet_tiles_of_faces_in_large_jpeg_photos_are_read_shrunk(tmp_path: Path, monkeypatch) -> None:
    """A tile shows a face of a 12-megapixel photo from the photo decoded shrunk, as far as the face keeps a tile's
    pixels: the same tile as from the whole photo, for a quarter of the decoding or less."""
    from PIL import Image

    from face_organizer import preview
    from face_organizer.samples import insightface_sample

    group = Image.open(insightface_sample("t1.jpg"))
    big = group.resize((4032, round(4032 * group.height / group.width)), Image.Resampling.LANCZOS)
    big.save(tmp_path / "IMG_0001.jpg", quality=92)
    big.save(tmp_path / "IMG_0001.png")
    box = np.array([1460, 839, 1804, 1309], np.float32)  # a face of t1.jpg, as found at this size: 611 pixels a tile
    shrunk_by = []
    real = preview.read_image_shrunk
    monkeypatch.setattr(preview, "read_image_shrunk",
                        lambda path, r: shrunk_by.append(real(path, r)[1]) or real(path, r))
    tile = preview._tile(preview.SheetFace(str(tmp_path / "IMG_0001.jpg"), box, ""))
    from_png = preview._tile(preview.SheetFace(str(tmp_path / "IMG_0001.png"), box, ""))
    assert shrunk_by == [4, 1]  # 611 / 4 pixels still fill a tile; a PNG is decoded whole
    monkeypatch.setattr(preview, "read_image_shrunk", lambda path, r: real(path, 1))
    whole = preview._tile(preview.SheetFace(str(tmp_path / "IMG_0001.jpg"), box, ""))
    assert tile.shape == whole.shape == from_png.shape == (preview.TILE, preview.TILE, 3)
    # The crop's edges may move by up to 4 of the photo's pixels, under a tile's pixel: as seen, not to the pixel.
    assert np.abs(tile.astype(int) - whole.astype(int)).mean() < 8
