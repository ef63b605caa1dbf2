"""Face models of a pack and the per-batch embedding function.

``embed_batch`` is the unit of work every launcher maps over shards: decoded
images in, embedding rows out, no global state.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from .alignment import align, centre_crop
from .detection import (NMS_THRESHOLD, SCRFD, Detections, batchable_detector, coarse_detector, has_rival, in_tile,
                        iou, is_panorama, load_detector_model, merged, panorama_tiles, pick_central, tile_around,
                        with_dynamic_input_batch)
from .frames import repeated_frames
from .images import reduction_keeping
from .modelpack import ModelPack
from .providers import Device, SessionReport, open_session
from .recognition import Recognizer, batchable_model, input_normalisation
from .rows import FaceRows
from .tensors import with_uint8_bgr_input

log = logging.getLogger(__name__)

Mode = Literal["crops", "photos"]
DEFAULT_DET_SIZE = 640  # photos mode's detection size (insightface's ``FaceAnalysis`` default)
# Photos mode: a face whose box's longer side the detector saw under this many pixels is at the smallest it finds
# (at 640, faces 66 pixels wide in a 12-megapixel photo: 412 of 432 found, 55 pixels: 292): a photo holding one
# may hold smaller faces it missed, which a larger --det-size finds.
AT_THE_LIMIT = 16
CPU_BATCH = 8


@dataclass(frozen=True)
class EmbedOptions:
    """How faces are found. Crops: pad, detect small, keep the central face; photos: every face."""

    mode: Mode = "crops"
    pad_ratio: float = 0.3
    crop_det_sizes: tuple[int, ...] = (192, 320)
    crop_threshold: float = 0.35
    photo_det_size: int = DEFAULT_DET_SIZE
    photo_threshold: float = 0.5
    # Photos mode: a photo without a face at photo_det_size is tried once more, padded like a crop,
    # at this size (0: never): portraits cropped to the face (avatars, ID photos) defeat the detector
    # as video crops do.
    photo_retry_size: int = 320
    # Photos mode: a JPEG photo is decoded shrunk by 2, 4 or 8 (in its DCT, several times faster) as far as
    # its longer side stays at least this (0: always whole). The detector sees photos at photo_det_size and
    # the recogniser faces at 112 pixels, so a 12-megapixel photo at 2016 pixels loses them little; boxes
    # are recorded in the file's own pixels all the same.
    photo_min_side: int = 2000
    # Photos mode: a face whose box is smaller than this (its longer side, in pixels of the photo as the detector
    # saw it at photo_det_size) is found again in a crop around it, as crops are (0: never). At 640 pixels a face
    # of a group photo is a few dozen pixels, and its landmarks too coarse to align it well.
    photo_refine_below: int = 64
    # Photos mode: a face of a JPEG decoded shrunk whose box's longer side came out fewer pixels than this is
    # aligned from the photo decoded again, shrunk only as far as the smallest such face keeps this many (0:
    # never). The recogniser sees a face at 112 pixels: one shrunk below that loses detail that the file has.
    photo_face_pixels: int = 112
    # Photos mode: a photo whose faces score under this at the median (a photo of one face: its score) is tried
    # turned by 90, 180 and 270 degrees, and kept turned where its faces score higher so (``turned_where_better``;
    # 0: never). A face lying on its side or upside down (a portrait shot of a camera without an orientation
    # sensor, a print scanned sideways) is often found with landmarks that do not fit it, and embedded as noise;
    # LFW photos turned scored 0.55 at the median, upright no lower than 0.70. Of many faces lying on their side
    # (a panorama stored sideways), one may score higher (0.72), hence the median rather than the best face.
    photo_upright_score: float = 0.7
    # Photos mode: photos in which no face is found upright are tried turned too (``--turn-faceless``): a print
    # scanned sideways often shows no face at all upright. Off by default, as every photo without a face (a
    # landscape, a document) would pay about two more detections for it.
    photo_turn_faceless: bool = False
    # Crops mode: > 0 gives a near-identical consecutive frame the embedding of the frame it
    # repeats (see ``frames``); the value is the signature distance that counts as repeating.
    reuse_similar_frames: float = 0.0

    @property
    def photo_decode_side(self) -> int:
        """The longer side a large JPEG photo keeps when decoded shrunk (0: decoded whole): ``photo_min_side``, and
        at least the size it is detected at, as a photo shrunk below that would be enlarged for detection."""
        return max(self.photo_min_side, self.photo_det_size) if self.photo_min_side else 0

    def detection_size(self, shape: tuple[int, ...]) -> int:
        """The size a photo of ``shape`` is detected at: ``photo_det_size``, but above 640 no more than the photo's
        longer side (rounded up to a multiple of 320: a GPU tunes its kernels for every new input shape), nor under
        640. A small photo enlarged past 640 shows faces larger than the detector's anchors: LFW's 250-pixel photos
        at 1280 gave 215 faces where 640 gave 229."""
        if self.photo_det_size <= DEFAULT_DET_SIZE:
            return self.photo_det_size
        return max(DEFAULT_DET_SIZE, min(self.photo_det_size, -(-max(shape[:2]) // 320) * 320))


@dataclass
class FaceModels:
    pack: ModelPack
    detector: SCRFD
    recognizer: Recognizer
    reports: list[SessionReport] = field(default_factory=list)
    batchable: bool = True

    @property
    def device(self) -> str:
        return self.reports[-1].device if self.reports else "cpu"

    @property
    def dim(self) -> int:
        return self.recognizer.dim

    @functools.cached_property
    def unrecognisable_centre(self) -> NDArray[np.float32] | None:
        """Where this model puts faces blurred past recognition (see ``quality``)."""
        from .quality import unrecognisable_centre

        return unrecognisable_centre(self)


def load_face_models(
    pack: ModelPack,
    device: Device = "auto",
    gpu_id: int = 0,
    *,
    batch_size: int = 64,
    threads: int = 0,
    tensorrt: bool = False,
) -> FaceModels:
    """Open verified sessions for the pack's detector and recogniser on ``device``."""
    import onnx  # here: the stages that only read embeddings files need no ONNX (0.8 s to import)

    # The sessions take the uint8 images and normalise them themselves (see tensors.py).
    det_model = load_detector_model(pack.detector, cast_first=tensorrt)
    det_session, det_report = open_session(det_model.SerializeToString(), pack.detector.name, device, gpu_id,
                                           threads=threads, tensorrt=tensorrt)
    rec_exported = onnx.load(str(pack.recognizer))
    rec_model = with_uint8_bgr_input(rec_exported, *input_normalisation(rec_exported), cast_first=tensorrt)
    rec_session, rec_report = open_session(rec_model.SerializeToString(), pack.recognizer.name, device, gpu_id,
                                           threads=threads, tensorrt=tensorrt)

    def reopener(name: str, report: SessionReport) -> Callable[[bytes], object]:
        def reopen(serialized: bytes) -> object:
            # Same device as the verified session: a dropped GPU was already reported above.
            return open_session(serialized, name, "cpu" if report.device == "cpu" else "cuda",  # or TensorRT's
                                gpu_id, threads=threads, quiet=True)[0]
        return reopen

    # On the CPU large batches only spill out of cache (measured: batch 8 is fastest);
    # accelerators want the whole batch.
    cap = batch_size if rec_report.device != "cpu" else min(batch_size, CPU_BATCH)
    session, batchable = batchable_model(rec_model, reopener(pack.recognizer.name, rec_report), rec_session)
    # Accelerators tune kernels per input shape: their batches are padded to a few sizes (buckets.py).
    recognizer = Recognizer(session, rec_exported, max_batch=cap if batchable else 1, pad_batches=rec_report.device != "cpu")
    det_batch_session, layout = batchable_detector(det_model, reopener(pack.detector.name, det_report), det_session)
    detector = SCRFD(det_batch_session, layout, max_batch=cap, pad_batches=det_report.device != "cpu")
    if det_report.device == "cpu":  # on accelerators the CPU's work bounds a run, not the detector's
        batched_model = det_model if layout is None else with_dynamic_input_batch(det_model)
        detector.coarse = coarse_detector(batched_model, detector, reopener(pack.detector.name, det_report))
    log.info("recogniser %s: %d-d embeddings, batch %s; detector %s: batch %s%s", pack.recognizer.name, recognizer.dim,
             recognizer.max_batch if batchable else "fixed at 1", pack.detector.name,
             detector.max_batch if layout else "fixed at 1",
             ", crops by its coarse levels first" if detector.coarse else "")
    return FaceModels(pack, detector, recognizer, [det_report, rec_report], batchable)


@dataclass
class BatchResult:
    rows: FaceRows
    no_face: list[str]
    reused: list[tuple[str, str]] = field(default_factory=list)  # (frame, the frame whose embedding it took)
    several: list[str] = field(default_factory=list)  # crops mode: images that show another face of like size
    at_the_limit: list[str] = field(default_factory=list)  # photos mode: photos with a face at the detector's limit


@dataclass(frozen=True)
class ShrunkPhotos:
    """The photos of a batch that were decoded shrunk (a JPEG, in its DCT: ``images.load``): the factor of each,
    by path, and how to decode one again shrunk by a smaller factor (None where it cannot be)."""

    reductions: Mapping[str, int]
    decode: Callable[[str, int], NDArray[np.uint8] | None]


CropFace = tuple[NDArray[np.float32], NDArray[np.float32], float]


def find_crop_faces(images: Sequence[NDArray[np.uint8]], detector: SCRFD, options: EmbedOptions, *,
                    several: set[int] | None = None) -> list[CropFace | None]:
    """For each crop, (kps (5, 2), box (4,), score) of the face it shows, in its pixels, or None.

    Every crop is detected at the first size in one batched pass (``SCRFD.detect_crops``); only those without a
    face are tried again at the next size. ``several`` collects the indices of the images that
    show another face about as large as the one chosen (``detection.has_rival``).
    """
    found: list[CropFace | None] = [None] * len(images)
    todo = list(range(len(images)))
    for attempt, size in enumerate(options.crop_det_sizes):
        if not todo:
            break
        # The crops tried again hold no face the whole network found at the first size: mostly not faces at all
        # (the extractor's mistakes), for which the coarse network would be work spent for nothing.
        detect = detector.detect_crops if attempt == 0 else detector.detect_many
        dets_list = detect([images[i] for i in todo], (size, size), options.crop_threshold, pad_ratio=options.pad_ratio)
        missed = []
        for i, dets in zip(todo, dets_list):
            if len(dets):
                j = pick_central(dets, images[i].shape)
                found[i] = (dets.kps[j], dets.boxes[j], float(dets.scores[j]))
                if several is not None and has_rival(dets, j):
                    several.add(i)
            else:
                missed.append(i)
        todo = missed
    return found


def find_crop_face(image: NDArray[np.uint8], detector: SCRFD, options: EmbedOptions) -> CropFace | None:
    """``find_crop_faces`` for one crop."""
    return find_crop_faces([image], detector, options)[0]


TURNS = (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE)
TURN_PROBE = 320  # the size at which a photo's way up is told: a quarter of the pixels of 640


def find_photo_faces(images: Sequence[NDArray[np.uint8]], detector: SCRFD, options: EmbedOptions) -> list[Detections]:
    """Every face above the threshold in each photo, in its pixels; photos without one are
    tried again padded, at ``options.photo_retry_size``, in one batched pass, small faces have
    their landmarks found again (``refine_small_faces``), and photos whose faces score low are
    tried turned (``options.photo_upright_score``), and so are photos without a face where
    ``options.photo_turn_faceless``."""
    def detect(photos: Sequence[NDArray[np.uint8]]) -> list[Detections]:
        return detect_photo_faces(photos, detector, options)

    return turned_where_better(images, detect(images), detect, detector, options,
                               faceless=options.photo_turn_faceless)


def _best_scores(found: Sequence[Detections]) -> NDArray[np.float32]:
    return np.array([float(dets.scores.max()) if len(dets) else 0.0 for dets in found], np.float32)


def probe_views(image: NDArray[np.uint8]) -> list[NDArray[np.uint8]]:
    """What ``turned_where_better`` tells a photo's way up from: the photo, or an elongated one's tiles
    (``panorama_tiles``), in which its faces are not shrunk to a few pixels at ``TURN_PROBE``."""
    return [image[y0:y1, x0:x1] for x0, y0, x1, y1 in panorama_tiles(image.shape)] or [image]


def turned_where_better(images: Sequence[NDArray[np.uint8]], found: list[Detections],
                        detect: Callable[[Sequence[NDArray[np.uint8]]], list[Detections]], detector: SCRFD,
                        options: EmbedOptions, *, faceless: bool = False) -> list[Detections]:
    """``found`` (faces of ``images``, by ``detect``), where a photo's faces score under
    ``options.photo_upright_score`` at the median, replaced by what ``detect`` finds in the photo turned by 90, 180
    or 270 degrees, in the photo's own pixels, where the photo looks turned. Which way up it is, is told cheaply
    first: the way up its best face scores highest at ``TURN_PROBE`` pixels, in the photo or its tiles
    (``probe_views``; of 200 LFW photos, each scored higher upright than turned a quarter); then ``detect`` runs on
    that turn only, kept where it finds a face scoring higher than ``found``. With ``faceless``, photos without a
    face are tried too (a few reference photos; a library's landscapes would pay for it)."""
    found = list(found)
    upright_score = options.photo_upright_score
    weak = [i for i, dets in enumerate(found) if (len(dets) or faceless and upright_score)
            and (not len(dets) or float(np.median(dets.scores)) < upright_score)]
    if not weak:
        return found
    probe = (TURN_PROBE, TURN_PROBE)
    views = [(k, view) for k, i in enumerate(weak) for view in probe_views(images[i])]
    ways: list[NDArray[np.float32]] = []
    for turn in (None, *TURNS):
        turned = [view if turn is None else cv2.rotate(view, turn) for _, view in views]
        best = _best_scores(detector.detect_many(turned, probe, options.photo_threshold / 2))
        per_photo = np.zeros(len(weak), np.float32)
        np.maximum.at(per_photo, [k for k, _ in views], best)
        ways.append(per_photo)
    scores = np.stack(ways)  # (upright and each turn, photo)
    way = np.argmax(scores, axis=0)
    for n, turn in enumerate(TURNS, start=1):
        chosen = [k for k in range(len(weak)) if way[k] == n and scores[n, k] > scores[0, k]]
        if not chosen:
            continue
        again = detect([cv2.rotate(images[weak[k]], turn) for k in chosen])
        for k, dets in zip(chosen, again):
            i = weak[k]
            if len(dets) and (not len(found[i]) or float(dets.scores.max()) > float(found[i].scores.max())):
                found[i] = dets.turned_back(turn, images[i].shape)
    return found


def detect_photo_faces(images: Sequence[NDArray[np.uint8]], detector: SCRFD,
                       options: EmbedOptions) -> list[Detections]:
    """``find_photo_faces`` without trying photos turned: each photo detected at its size
    (``EmbedOptions.detection_size``), an elongated one in tiles too (``panorama_tiles``; its faces too large for
    them again around each, ``_large_faces_again``), tried again padded where none is found, and its small faces
    refined."""
    tiles = [(n, tile) for n, image in enumerate(images) for tile in panorama_tiles(image.shape)]
    by_view = _detect_views(list(images) + [images[n][y0:y1, x0:x1] for n, (x0, y0, x1, y1) in tiles], detector,
                            options)
    found = by_view[: len(images)]
    whole_only: dict[int, NDArray[np.bool_]] = {}  # an elongated photo's faces that only the whole photo showed
    if tiles:  # an elongated photo: the faces of its tiles too, each face once
        parts: dict[int, list[Detections]] = {}
        for i, (n, tile) in enumerate(tiles, start=len(images)):
            parts.setdefault(n, []).append(in_tile(by_view[i], tile, images[n].shape))
        for n, each in parts.items():
            found[n], whole_only[n] = merged(found[n], each)
        _large_faces_again(images, found, whole_only, detector, options)
    missed = [i for i, dets in enumerate(found) if not len(dets)]
    if missed and options.photo_retry_size:
        retry = (options.photo_retry_size, options.photo_retry_size)
        again = detector.detect_many([images[i] for i in missed], retry, options.photo_threshold, pad_ratio=options.pad_ratio)
        for i, dets in zip(missed, again):
            found[i] = dets
            whole_only.pop(i, None)
    return refine_small_faces(images, found, detector, options, whole_only) if options.photo_refine_below else found


def _detect_views(views: Sequence[NDArray[np.uint8]], detector: SCRFD, options: EmbedOptions) -> list[Detections]:
    """The faces of each of ``views`` (photos, or parts of them), each detected at its size
    (``EmbedOptions.detection_size``): one batched call for each size (only above 640 do photos differ)."""
    sizes = [options.detection_size(view.shape) for view in views]
    by_view: dict[int, Detections] = {}
    for size in sorted(set(sizes)):
        same = [i for i, s in enumerate(sizes) if s == size]
        by_view.update(zip(same, detector.detect_many([views[i] for i in same], (size, size), options.photo_threshold)))
    return [by_view[i] for i in range(len(views))]


def _large_faces_again(images: Sequence[NDArray[np.uint8]], found: list[Detections],
                       whole_only: dict[int, NDArray[np.bool_]], detector: SCRFD, options: EmbedOptions) -> None:
    """Each face of an elongated photo that only the whole photo showed (``merged``: larger than half a tile, cut
    by every tile), where its faces are shrunk with the photo's length, detected again in a tile centred on it
    (``tile_around``), padded as a photo without a face found is (a face filling most of a tile is not found
    unpadded, as tight crops are not): in ``found``, it takes the box, score and landmarks of the face found
    there that overlaps its box most, where that is the same face (``NMS_THRESHOLD``: not a smaller face within
    it, which a tile found), and is no longer marked in ``whole_only``."""
    again = [(n, int(i), tile_around(found[n].boxes[i], images[n].shape))
             for n, mask in whole_only.items() for i in np.flatnonzero(mask)]
    if not again or not options.photo_retry_size:
        return
    size = (options.photo_retry_size, options.photo_retry_size)
    seen = detector.detect_many([images[n][y0:y1, x0:x1] for n, _, (x0, y0, x1, y1) in again], size,
                                options.photo_threshold, pad_ratio=options.pad_ratio)
    for (n, i, tile), dets in zip(again, seen):
        dets = in_tile(dets, tile, images[n].shape)
        overlap = iou(found[n].boxes[i : i + 1, :4], dets.boxes[:, :4])[0]
        if not len(dets) or overlap.max() < NMS_THRESHOLD:
            continue
        best = int(np.argmax(overlap))
        found[n] = Detections(found[n].boxes.copy(), found[n].scores.copy(), found[n].kps.copy())
        found[n].boxes[i], found[n].scores[i], found[n].kps[i] = dets.boxes[best], dets.scores[best], dets.kps[best]
        whole_only[n][i] = False


def detection_scale(shape: tuple[int, ...], options: EmbedOptions) -> float:
    """The scale at which the detector sees a photo of ``shape`` (``detect_photo_faces``): its longer side fitted to
    its detection size, or for an elongated photo, its tiles' (``panorama_tiles``)."""
    if is_panorama(*shape[:2]):
        side = min(shape[:2])
        return options.detection_size((side, side)) / side
    return options.detection_size(shape) / max(shape[:2])


def refine_small_faces(images: Sequence[NDArray[np.uint8]], found: list[Detections], detector: SCRFD,
                       options: EmbedOptions,
                       whole_only: Mapping[int, NDArray[np.bool_]] | None = None) -> list[Detections]:
    """``found`` with the landmarks of each face smaller than ``options.photo_refine_below`` (as the detector saw
    its photo) found again in a crop of the photo around it (a square 1.5 times its box, centred on it), as crops
    are found (``find_crop_faces``, batched), where the face found there is this one. Boxes and scores stay the
    photo's, so the faces and their order do not change. ``whole_only`` marks the faces of an elongated photo
    that its tiles did not show (``merged``): the detector saw those at the whole photo's scale, not its tiles'."""
    crops: list[NDArray[np.uint8]] = []
    where: list[tuple[int, int, int, int]] = []  # (photo, face, left, top) of each crop
    for n, (image, dets) in enumerate(zip(images, found)):
        h, w = image.shape[:2]
        seen = np.full(len(dets), detection_scale(image.shape, options), np.float32)
        if whole_only is not None and n in whole_only:
            seen[whole_only[n]] = options.detection_size(image.shape) / max(image.shape[:2])
        for i, (x1, y1, x2, y2) in enumerate(dets.boxes[:, :4]):
            side = max(x2 - x1, y2 - y1)
            if side * seen[i] >= options.photo_refine_below:
                continue
            cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, side * 0.75
            left, top = max(0, int(cx - half)), max(0, int(cy - half))
            crop = image[top : min(h, int(cy + half) + 1), left : min(w, int(cx + half) + 1)]
            if crop.size:
                crops.append(crop)
                where.append((n, i, left, top))
    if not crops:
        return found
    refined = list(found)
    as_crops = replace(options, mode="crops", crop_det_sizes=options.crop_det_sizes[:1])  # at their first size
    for (n, i, left, top), hit in zip(where, find_crop_faces(crops, detector, as_crops)):
        if hit is None:
            continue
        kps, box, _ = hit
        x1, y1, x2, y2 = found[n].boxes[i, :4]
        cx, cy = (box[0] + box[2]) / 2 + left, (box[1] + box[3]) / 2 + top
        if not (x1 <= cx <= x2 and y1 <= cy <= y2):  # a neighbour's face, not this one
            continue
        if refined[n] is found[n]:
            refined[n] = Detections(found[n].boxes, found[n].scores, found[n].kps.copy())
        refined[n].kps[i] = kps + np.array([left, top], np.float32)
    return refined


def _landmarks_for_alignment(path: str, image: NDArray[np.uint8], dets: Detections, options: EmbedOptions,
                             shrunk: ShrunkPhotos | None) -> tuple[NDArray[np.float32], list[NDArray[np.uint8]]]:
    """Where each face of a photo is aligned from: its landmarks, and the image they are in. A face of a photo
    decoded shrunk whose box's longer side is under ``options.photo_face_pixels`` is aligned from the photo
    decoded again (``shrunk.decode``), shrunk only as far as the smallest such face keeps that many pixels; the
    other faces, and every face where it cannot be decoded again, from ``image``."""
    kps, sources = dets.kps, [image] * len(dets)
    reduction = shrunk.reductions.get(path, 1) if shrunk is not None else 1
    if shrunk is None or reduction == 1 or not options.photo_face_pixels or not len(dets):
        return kps, sources
    sides = (dets.boxes[:, 2:4] - dets.boxes[:, 0:2]).max(axis=1)
    small = np.flatnonzero(sides < options.photo_face_pixels)
    if not len(small):
        return kps, sources
    factor = reduction_keeping(float(sides[small].min()) * reduction, options.photo_face_pixels)
    again = shrunk.decode(path, factor)
    scale = reduction / factor
    h, w = image.shape[:2]
    if again is None or abs(again.shape[0] - h * scale) >= scale or abs(again.shape[1] - w * scale) >= scale:
        log.debug("%s: not decoded again; its small faces are aligned from the photo as decoded first", path)
        return kps, sources
    kps = kps.copy()
    kps[small] = (kps[small] + 0.5) * scale - 0.5  # pixel centres: the DCT's pixel i covers the file's [i*r, (i+1)*r)
    for i in small:
        sources[i] = again
    return kps, sources


def embed_batch(images: Sequence[tuple[str, NDArray[np.uint8]]], models: FaceModels, options: EmbedOptions,
                shrunk: ShrunkPhotos | None = None) -> BatchResult:
    """Embed decoded BGR images: one row per crop (crops mode) or per face (photos mode). Photos mode: the
    small faces of photos that ``shrunk`` names are aligned from their photos decoded again, shrunk less; rows
    keep every photo's boxes in the pixels of its image as given."""
    if options.mode == "crops" and options.reuse_similar_frames > 0:
        source = repeated_frames([image for _, image in images], options.reuse_similar_frames)
        if any(s >= 0 for s in source):
            kept = [i for i, s in enumerate(source) if s < 0]
            result = embed_batch([images[i] for i in kept], models, replace(options, reuse_similar_frames=0.0))
            position = {i: k for k, i in enumerate(kept)}
            rows = result.rows.select(np.array([position[i if s < 0 else s] for i, s in enumerate(source)], np.intp))
            rows.paths = [path for path, _ in images]
            return BatchResult(rows, [], [(images[i][0], images[s][0]) for i, s in enumerate(source) if s >= 0],
                               result.several)
    size = models.recognizer.input_size
    aligned: list[NDArray[np.uint8]] = []
    paths: list[str] = []
    detected: list[bool] = []
    scores: list[float] = []
    boxes: list[NDArray[np.float32]] = []
    indices: list[int] = []
    no_face: list[str] = []
    several: set[int] = set()
    at_the_limit: list[str] = []
    if options.mode == "crops":
        crop_faces = find_crop_faces([image for _, image in images], models.detector, options, several=several)
    else:
        photo_faces = find_photo_faces([image for _, image in images], models.detector, options)
    for n, (path, image) in enumerate(images):
        if options.mode == "crops":
            found = crop_faces[n]
            if found is None:
                aligned.append(centre_crop(image, size))
                h, w = image.shape[:2]
                boxes.append(np.array([0, 0, w, h], np.float32))
                detected.append(False)
                scores.append(0.0)
            else:
                kps, box, score = found
                aligned.append(align(image, kps, size))
                boxes.append(box.astype(np.float32))
                detected.append(True)
                scores.append(score)
            paths.append(path)
            indices.append(0)
            continue
        dets = photo_faces[n]
        if not len(dets):
            no_face.append(path)
            continue
        dets = dets.take(np.argsort(dets.boxes[:, 0], kind="stable"))  # left to right: stable face_index
        scale = detection_scale(image.shape, options)  # as the detector saw the photo
        if (dets.boxes[:, 2:4] - dets.boxes[:, 0:2]).max(axis=1).min() * scale < AT_THE_LIMIT:
            at_the_limit.append(path)
        kps, sources = _landmarks_for_alignment(path, image, dets, options, shrunk)
        for i in range(len(dets)):
            aligned.append(align(sources[i], kps[i], size))
            boxes.append(dets.boxes[i])
            detected.append(True)
            scores.append(float(dets.scores[i]))
            paths.append(path)
            indices.append(i)
    if not paths:
        return BatchResult(FaceRows.empty(models.dim), no_face)  # no face: none at the limit either
    embeddings = models.recognizer.embed(np.stack(aligned))
    rows = FaceRows(paths, embeddings, np.array(detected, bool), np.array(scores, np.float32),
                    np.stack(boxes).astype(np.float32), np.array(indices, np.int32))
    return BatchResult(rows, no_face, several=[images[i][0] for i in sorted(several)], at_the_limit=at_the_limit)
