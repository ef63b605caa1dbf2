"""The embeddings file: a pickle of a plain dict that users' scripts can ``pickle.load``.

Keys: ``paths`` (list of absolute path strings), ``embeddings`` (float32 [N, D],
L2-normalised), ``detected`` (bool [N]), ``det_score`` (float32 [N]), ``bbox``
(float32 [N, 4]), ``face_index`` (int32 [N]), ``failed`` (list of (path, reason)),
``no_face`` (list of paths, photos mode), ``reused`` (list of (path, source path): frames
that took the embedding of the near-identical frame they repeat, when asked for),
``file_signatures`` (dict of ``paths``, ``size`` int64 [M] and ``mtime_ns`` int64 [M]:
each embedded or face-less file as it was when read, so a resumed run embeds changed
files again), ``content_digests`` (dict of ``paths`` and ``blake2b_128`` uint8 [K, 16]: a
digest of each file's bytes as it was read, so that a later run gives a copy of it under
another name its rows instead of embedding it again) and ``meta`` (dict).

Its arrays are written as ``numpy.ndarray(shape, dtype, buffer)``, which every numpy release reads:
numpy 2's own way names ``numpy._core``, which numpy 1.x cannot import, so a user's script on
numpy 1.26 failed on ``pickle.load`` (numpy/numpy#28340).

Our own stages read it with ``load``, whose unpickler resolves only numpy's array
constructors: a pickle that would import anything else is refused unexecuted.
"""

from __future__ import annotations

import copyreg
import glob
import logging
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np

from . import __version__
from .errors import EmbeddingsFileError, SetupError, UnsafePickleError
from .rows import FaceRows
from .fsutil import atomic_open, lock_holder, missing_path_hint
from .images import Signature
from .progress import count

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PICKLE_PROTOCOL = 5  # arrays are written from their own memory (protocol 4 first copies each into bytes)
# meta: photos held without a face from a run without --turn-faceless that a run with it did not try turned (not
# under its inputs): their paths, so that a run over theirs tries them (``embed_run.not_turned``)
UNTRIED_KEY = "photo_faceless_untried"

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


def _portable_array(array: np.ndarray) -> str | tuple[Any, ...]:
    """An array as ``numpy.ndarray(shape, dtype, buffer)``: the same bytes, written from the array's own
    memory (protocol 5), read back writable (a bytearray), and named only by ``numpy.ndarray``."""
    if array.dtype.kind not in "biuf":
        return array.__reduce_ex__(PICKLE_PROTOCOL)  # none is written so: numpy's own way
    array = np.ascontiguousarray(array)
    # (numpy's stubs give arrays the buffer protocol only from Python 3.12 on)
    return np.ndarray, (array.shape, array.dtype.str, pickle.PickleBuffer(array))  # type: ignore[arg-type]


class _PortablePickler(pickle.Pickler):
    dispatch_table = {**copyreg.dispatch_table, np.ndarray: _portable_array}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(f"refusing to load {module}.{name}: embeddings files hold only plain data and numpy arrays")


def safe_load(handle: IO[bytes]) -> Any:
    """Unpickle from an open file, refusing anything but plain data and numpy arrays. Read from
    the file, its bytes are never held whole beside the arrays made of them (0.5 GB less at the
    peak for 250,000 x 512 embeddings)."""
    return _RestrictedUnpickler(handle).load()


@dataclass
class EmbeddingsFile:
    rows: FaceRows
    failed: list[tuple[str, str]]
    no_face: list[str]
    meta: dict[str, Any]
    reused: list[tuple[str, str]] = field(default_factory=list)
    signatures: dict[str, Signature] = field(default_factory=dict)
    digests: dict[str, bytes] = field(default_factory=dict)  # of each file's bytes as read (``images.content_digest``)

    @property
    def dim(self) -> int:
        return int(self.rows.embeddings.shape[1])


def make_meta(*, pack_name: str, model_files: dict[str, str], dim: int, device: str, inputs: list[str],
              mode: str, complete: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "model_pack": pack_name,
        "model_files": dict(model_files),
        "embedding_size": int(dim),
        "device": device,
        "inputs": list(inputs),
        "mode": mode,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "complete": complete,
        **extra,
    }


def to_dict(ef: EmbeddingsFile) -> dict[str, Any]:
    r = ef.rows
    return {
        "paths": list(r.paths),
        "embeddings": np.ascontiguousarray(r.embeddings, dtype=np.float32),
        "detected": r.detected.astype(bool),
        "det_score": r.det_score.astype(np.float32),
        "bbox": r.bbox.astype(np.float32),
        "face_index": r.face_index.astype(np.int32),
        "failed": [(str(p), str(reason)) for p, reason in ef.failed],
        "no_face": list(ef.no_face),
        "reused": [(str(p), str(source)) for p, source in ef.reused],
        "file_signatures": {"paths": list(ef.signatures),
                            "size": np.fromiter((s for s, _ in ef.signatures.values()), np.int64, len(ef.signatures)),
                            "mtime_ns": np.fromiter((m for _, m in ef.signatures.values()), np.int64, len(ef.signatures))},
        "content_digests": {"paths": list(ef.digests),
                            DIGEST_KEY: np.frombuffer(b"".join(ef.digests.values()), np.uint8).reshape(-1, DIGEST_SIZE)
                            },
        "meta": dict(ef.meta),
    }


def save(path: str | os.PathLike[str], ef: EmbeddingsFile) -> None:
    """Write atomically: the previous file stays intact until the new one is complete."""
    with atomic_open(path, "wb") as handle:  # pickled into the file: no second copy of the rows as bytes
        _PortablePickler(handle, protocol=PICKLE_PROTOCOL).dump(to_dict(ef))


def _array(d: dict[str, Any], key: str, dtype: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    value = d.get(key)
    if not isinstance(value, np.ndarray):
        raise EmbeddingsFileError(f"{where}: '{key}' is missing or not an array")
    if value.shape[: len(shape)] != shape or value.ndim != len(shape):
        raise EmbeddingsFileError(f"{where}: '{key}' has shape {value.shape}, expected {shape}")
    return value.astype(dtype, copy=False)


def from_dict(d: Any, where: str = "embeddings file") -> EmbeddingsFile:
    """Validate a loaded dict and turn it into an ``EmbeddingsFile``."""
    if not isinstance(d, dict):
        raise EmbeddingsFileError(f"{where}: not an embeddings file (top level is {type(d).__name__}, not dict)")
    paths = d.get("paths")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise EmbeddingsFileError(f"{where}: 'paths' must be a list of strings")
    emb = d.get("embeddings")
    if not isinstance(emb, np.ndarray) or emb.ndim != 2 or emb.shape[0] != len(paths):
        raise EmbeddingsFileError(f"{where}: 'embeddings' must be a float array with one row per path")
    n, dim = emb.shape
    meta = d.get("meta")
    if not isinstance(meta, dict):
        raise EmbeddingsFileError(f"{where}: 'meta' is missing, so generate_embeddings did not write it; a file of "
                                  "your own is read with a 'meta' dict beside 'paths' and 'embeddings' (an empty one "
                                  "will do; README.md, \"The embeddings file\", says what more it may hold)")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise EmbeddingsFileError(f"{where}: format version {meta.get('format_version')} is newer than this tool reads ({FORMAT_VERSION})")
    detected = _array(d, "detected", bool, (n,), where) if "detected" in d else np.ones(n, bool)
    det_score = _array(d, "det_score", np.float32, (n,), where) if "det_score" in d else np.zeros(n, np.float32)
    bbox = _array(d, "bbox", np.float32, (n, 4), where) if "bbox" in d else np.full((n, 4), np.nan, np.float32)
    face_index = _array(d, "face_index", np.int32, (n,), where) if "face_index" in d else np.zeros(n, np.int32)
    failed = [(str(p), str(r)) for p, r in d.get("failed", [])]
    no_face = [str(p) for p in d.get("no_face", [])]
    reused = [(str(p), str(source)) for p, source in d.get("reused", [])]
    rows = FaceRows(list(paths), emb.astype(np.float32, copy=False), detected, det_score, bbox, face_index)
    rows, unusable = _usable_rows(rows, where)
    signatures = _signatures(d.get("file_signatures", {}), where)
    return EmbeddingsFile(rows, failed + unusable, no_face, meta, reused, signatures,
                          _digests(d.get("content_digests", {}), where))


UNUSABLE = "embedding failed: NonFiniteEmbedding"  # as a run lists such a face now (``recognition.NonFiniteEmbedding``)


def _usable_rows(rows: FaceRows, where: str) -> tuple[FaceRows, list[tuple[str, str]]]:
    """``rows`` but the images with an embedding that is no direction (NaN, infinity, zeros: TensorRT's
    fp16 overflowing, in a file written before runs checked), which would break FAISS; those images are
    listed as failed instead, so the next run over the inputs embeds them again. Rows not of unit length
    (a file a user's own script wrote) are normalised, as the cut-offs assume."""
    x = rows.embeddings
    norms = np.einsum("ij,ij->i", x, x) if len(x) else np.zeros(0, np.float32)  # NaN or inf where any value is
    bad = ~(np.isfinite(norms) & (norms > 0))
    if not bad.all() and np.abs(norms[~bad] - 1).max() > 1e-2:  # a user's file of insightface's raw `embedding`
        log.warning("%s: its embeddings are not of unit length, as this format has them: normalised", where)
        rows.embeddings = (x / np.sqrt(np.where(bad, 1, norms))[:, None]).astype(np.float32, copy=False)
    if not bad.any():
        return rows, []
    images = sorted({rows.paths[i] for i in np.flatnonzero(bad)})
    gone = set(images)  # a photo's other faces too: the run embeds the photo again, not one face of it
    log.warning("%s: no usable embedding (NaN, infinity or zeros) for %s of %s: left out, and listed as failed, "
                "so that generate_embeddings embeds them again", where, count(int(bad.sum()), "face"),
                count(len(images), "image"))
    return rows.select(np.array([i for i, p in enumerate(rows.paths) if p not in gone], np.intp)), \
        [(p, UNUSABLE) for p in images]


def _signatures(value: Any, where: str) -> dict[str, Signature]:
    """``file_signatures`` as path -> (size, mtime_ns); absent in files older than the key."""
    if not value:
        return {}
    paths, size, mtime = (value.get(k) if isinstance(value, dict) else None for k in ("paths", "size", "mtime_ns"))
    if not (isinstance(paths, list) and all(isinstance(p, str) for p in paths)
            and isinstance(size, np.ndarray) and isinstance(mtime, np.ndarray)
            and size.shape == mtime.shape == (len(paths),)):
        raise EmbeddingsFileError(f"{where}: 'file_signatures' must hold 'paths' and one 'size' and 'mtime_ns' per path")
    return dict(zip(paths, zip(size.astype(np.int64).tolist(), mtime.astype(np.int64).tolist())))


DIGEST_KEY, DIGEST_SIZE = "blake2b_128", 16  # ``images.content_digest``


def _digests(value: Any, where: str) -> dict[str, bytes]:
    """``content_digests`` as path -> digest; absent in files older than the key."""
    if not value:
        return {}
    paths, digests = (value.get(k) if isinstance(value, dict) else None for k in ("paths", DIGEST_KEY))
    if not (isinstance(paths, list) and all(isinstance(p, str) for p in paths)
            and isinstance(digests, np.ndarray) and digests.shape == (len(paths), DIGEST_SIZE)):
        raise EmbeddingsFileError(f"{where}: 'content_digests' must hold 'paths' and one {DIGEST_SIZE}-byte "
                                  f"'{DIGEST_KEY}' per path")
    return dict(zip(paths, (row.tobytes() for row in digests.astype(np.uint8, copy=False))))


PARTS_SUFFIX = ".parts"


def parts_dir(output: str | os.PathLike[str]) -> Path:
    """The folder of checkpoint parts beside an embeddings file while its run is unfinished."""
    return Path(os.fspath(output) + PARTS_SUFFIX)


def expand_unfinished(names: Sequence[str]) -> list[str]:
    """``names`` as given, except a pattern that the shell left as it was because no file matched it,
    as ``embeddings_gpu*.pkl`` where the runs have written only checkpoints so far
    (``embeddings_gpu0.pkl.parts``): it stands for the files and the unfinished files it matches."""
    out: list[str] = []
    for name in names:
        if os.path.lexists(name) or not glob.has_magic(name):
            out.append(name)
            continue
        found = set(glob.glob(name)) | {p[:-len(PARTS_SUFFIX)] for p in glob.glob(name + PARTS_SUFFIX)}
        out += sorted(found) or [name]
    return out


def part_path(output: str | os.PathLike[str], number: int) -> Path:
    """The ``number``-th checkpoint part of a run into ``output``."""
    return parts_dir(output) / f"part-{number:06d}.pkl"


def checkpoint_parts(output: str | os.PathLike[str]) -> list[Path]:
    """The checkpoint parts beside ``output``, in the order they were written (none when the
    folder is missing or unreadable)."""
    try:
        return sorted(parts_dir(output).glob("part-*.pkl"))
    except OSError:
        return []


def check_replaceable(path: str | os.PathLike[str]) -> None:
    """Refuse (``SetupError``) a run that starts over (``--no-resume``) into ``path`` where ``path`` holds a file
    that is not an embeddings file: a photo or a note named as ``--output`` by mistake would be replaced. Told by
    its first bytes, as pickles of protocol 2 and later begin (``pickle.dump``'s since Python 3), without reading
    the rest; an empty file holds nothing to lose. Only a regular file is read (a pipe would wait for input)."""
    if not os.path.isfile(path):
        return
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except OSError as err:
        raise SetupError(f"cannot read {os.fspath(path)}, which --no-resume would replace: "
                         f"{err.strerror or err}") from None
    if head and not (head[:1] == pickle.PROTO and len(head) == 2 and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL):
        raise SetupError(f"--output {os.fspath(path)} is a file that is not an embeddings file (not a pickle), which "
                         "--no-resume would replace: name a new file for the embeddings (ending in .pkl)")


def load(path: str | os.PathLike[str]) -> EmbeddingsFile:
    """Read and validate an embeddings file without executing anything it contains."""
    where = os.fspath(path)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, after the unpickling
    except FileNotFoundError as err:
        if parts_dir(path).is_dir():
            raise EmbeddingsFileError(
                f"embeddings file {where} is not finished: its run was interrupted or is still going (checkpoints "
                f"in {parts_dir(path)}); run the same generate_embeddings command again to finish it "
                "(embeddings_info.py tells which)") from err
        if (writer := lock_holder(path)) is not None:
            raise EmbeddingsFileError(f"embeddings file {where} is not written yet: a generate_embeddings run (pid "
                                      f"{writer}) is making it; it appears when that run finishes") from err
        if glob.has_magic(where):  # left as it was by the shell, as nothing matched it
            raise EmbeddingsFileError(f"no embeddings file matches {where} (nor a run's checkpoints: "
                                      f"{os.path.basename(where)}{PARTS_SUFFIX})") from err
        raise EmbeddingsFileError(f"cannot read embeddings file {where}: {err.strerror or err}"
                                  f"{missing_path_hint(where)}") from err
    except IsADirectoryError as err:
        if where.rstrip("/").endswith(PARTS_SUFFIX):  # named by a pattern, or picked by tab completion
            run = where.rstrip("/")[: -len(PARTS_SUFFIX)]
            raise EmbeddingsFileError(f"{where} holds the checkpoints of the unfinished run that writes {run}: run "
                                      "the same generate_embeddings command again to finish it, then name "
                                      f"{os.path.basename(run)}") from err
        raise EmbeddingsFileError(f"{where} is a folder, not an embeddings file; name the files in it "
                                  f"(e.g. {os.path.join(where, 'embeddings_gpu*.pkl')})") from err
    except OSError as err:
        raise EmbeddingsFileError(f"cannot read embeddings file {where}: {err.strerror or err}") from err
    with handle:
        try:
            obj = safe_load(handle)
        except UnsafePickleError as err:
            raise UnsafePickleError(f"{where}: {err}") from None
        except OSError as err:  # a read failing half-way (a disk or network error)
            raise EmbeddingsFileError(f"cannot read embeddings file {where}: {err.strerror or err}") from err
        except Exception as err:  # noqa: BLE001 - truncated or garbage pickles raise many types
            hint = ("" if where.endswith(".pkl") else "; name only the .pkl files (embeddings_gpu*.pkl: "
                    "embeddings_gpu* also matches the logs and file lists embed_all_gpus.py writes beside them)")
            raise EmbeddingsFileError(f"{where}: not a readable embeddings file ({type(err).__name__}: {err}){hint}") from None
    return from_dict(obj, where)


def model_signature(meta: dict[str, Any]) -> tuple[Any, ...]:
    """What must match for embeddings to be comparable: the recogniser and its size."""
    files = meta.get("model_files") or {}
    return (files.get("recognition"), meta.get("embedding_size"))


def _warn_other_modes(files: list[EmbeddingsFile], names: list[str], owner: dict[str, int], source: list[int],
                      paths: list[str]) -> None:
    """Say where images are in files of both modes: the rows of the first file holding each are the ones used."""
    modes = [f.meta.get("mode") or "crops" for f in files]
    if len(set(modes)) < 2:
        return
    other = {p for p, k in zip(paths, source) if modes[owner[p]] != modes[k]}
    if other:
        example = next(iter(sorted(other)))
        log.warning("%s in files of both crops and photos mode (such as %s): each is taken from the first file "
                    "given that holds it (%s, %s mode), all its faces from that run", count(len(other), "image"),
                    example, names[owner[example]], modes[owner[example]])


def merge(files: list[EmbeddingsFile], names: list[str]) -> EmbeddingsFile:
    """Combine files of the same model; an image in several files takes its rows from the first that holds it (all
    its faces from one run: files of crops and photos mode, or of other detection sizes, find other faces in it, so
    mixing their rows by face number could count one face twice and lose another).

    Raises ``EmbeddingsFileError`` when files come from different recognisers or sizes.
    """
    if not files:
        raise EmbeddingsFileError("no embeddings files given")
    first = model_signature(files[0].meta) + (files[0].dim,)
    for ef, name in zip(files[1:], names[1:]):
        sig = model_signature(ef.meta) + (ef.dim,)
        if sig != first:
            raise EmbeddingsFileError(
                f"{name} was made with {sig[0] or 'a model it does not name'} ({sig[2]}-d) but {names[0]} with "
                f"{first[0] or 'a model it does not name'} ({first[2]}-d): "
                "embeddings of different models cannot be mixed; re-embed with one model pack"
            )
    rows = files[0].rows if len(files) == 1 else FaceRows.concat([f.rows for f in files], files[0].dim)
    source = np.repeat(np.arange(len(files)), [len(f.rows) for f in files]).tolist()
    owner: dict[str, int] = {}  # the first file holding each image
    seen: set[tuple[str, int]] = set()
    keep = []
    for i, (p, fi, k) in enumerate(zip(rows.paths, rows.face_index.tolist(), source)):
        if owner.setdefault(p, k) == k and (p, fi) not in seen:
            seen.add((p, fi))
            keep.append(i)
    if len(keep) < len(rows):  # else no second copy of every row
        _warn_other_modes(files, names, owner, source, rows.paths)
        rows = rows.select(np.asarray(keep, dtype=np.intp))
    meta = dict(files[0].meta)
    meta["inputs"] = sorted({i for f in files for i in f.meta.get("inputs", [])})
    meta["merged_from"] = list(names)
    sizes = [f.meta["photo_det_size"] for f in files if isinstance(f.meta.get("photo_det_size"), int)]
    if sizes:  # the largest the photos were detected at: references to search them are detected so too
        meta["photo_det_size"] = max(sizes)
    rebased = [r for f in files if isinstance(f.meta.get("rebased"), list)
               for r in f.meta["rebased"] if isinstance(r, dict)]
    if rebased:  # each file's rewrites, once: files of one collection are usually rebased alike
        meta["rebased"] = list({repr(sorted(r.items())): r for r in rebased}.values())
    embedded = set(rows.paths)
    failed = list({p: (p, r) for f in files for p, r in f.failed if p not in embedded}.values())
    no_face = sorted({p for f in files for p in f.no_face})
    reused = sorted({p: (p, source) for f in files for p, source in f.reused}.values())
    signatures = {p: sig for f in reversed(files) for p, sig in f.signatures.items()}  # the first file's win, as its rows do
    digests = {p: digest for f in reversed(files) for p, digest in f.digests.items()}
    return EmbeddingsFile(rows, failed, no_face, meta, reused, signatures, digests)
