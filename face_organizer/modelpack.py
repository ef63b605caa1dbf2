"""InsightFace-style model packs: a folder of ONNX files, one per task.

Roles are recognised from each graph's inputs and outputs (as insightface's
``model_zoo`` does) rather than from file names, so custom packs work, and no
embedding size or batch size is ever assumed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ModelPackError

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

DEFAULT_PACK = "buffalo_l"
MODEL_ROOT_ENV = "FACE_ORGANIZER_MODEL_ROOT"

# Files of the packs insightface publishes, for error messages and offline checks.
KNOWN_PACKS: dict[str, tuple[str, ...]] = {
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx", "genderage.onnx", "1k3d68.onnx", "2d106det.onnx"),
    "buffalo_m": ("det_2.5g.onnx", "w600k_r50.onnx", "genderage.onnx", "1k3d68.onnx", "2d106det.onnx"),
    "buffalo_s": ("det_500m.onnx", "w600k_mbf.onnx", "genderage.onnx", "1k3d68.onnx", "2d106det.onnx"),
    "buffalo_sc": ("det_500m.onnx", "w600k_mbf.onnx"),
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx", "genderage.onnx", "1k3d68.onnx", "2d106det.onnx"),
}


def default_model_root() -> Path:
    """insightface's own cache folder, where ``FaceAnalysis`` downloads packs."""
    return Path("~/.insightface/models").expanduser()


@dataclass(frozen=True)
class ModelPack:
    name: str
    folder: Path
    detector: Path
    recognizer: Path
    genderage: Path | None

    def file_names(self) -> dict[str, str]:
        names = {"detection": self.detector.name, "recognition": self.recognizer.name}
        if self.genderage is not None:
            names["genderage"] = self.genderage.name
        return names


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value_info.type.tensor_type.shape.dim]


def classify(path: Path) -> str | None:
    """'detection', 'recognition', 'genderage', 'landmark' or None for an ONNX file."""
    import onnx  # here: the stages that only read embeddings files need no ONNX (0.8 s to import)

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as err:  # noqa: BLE001 - onnx raises DecodeError and friends
        raise ModelPackError(f"cannot read ONNX model {path}: {err}") from err
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if not inputs:
        return None
    shape = _dims(inputs[0])
    outputs = [_dims(o) for o in graph.output]
    if len(outputs) >= 5:
        return "detection"
    if len(shape) != 4 or len(outputs) != 1:
        return None
    size = shape[2:4]
    if size == [192, 192]:
        return "landmark"
    if size == [96, 96] and outputs[0][-1] == 3:
        return "genderage"
    if size[0] == size[1] and isinstance(size[0], int) and size[0] >= 100:
        return "recognition"
    return None


def _expected(name: str) -> str:
    files = KNOWN_PACKS.get(name)
    if files:
        return ", ".join(files[:3])
    return "a detector (e.g. det_10g.onnx) and a recogniser (e.g. w600k_r50.onnx)"


def _try_download(name: str, root: Path) -> None:
    """insightface's own download into ``root``; any failure is reported by the caller."""
    try:
        from insightface.utils.storage import ensure_available
    except ImportError:
        return
    log.info("model pack %s not found under %s: trying insightface's download", name, root)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # insightface prints progress to stdout
            ensure_available(root.name, name, root=str(root.parent))
    except Exception as err:  # noqa: BLE001 - network errors of every kind
        log.warning("download of %s failed: %s", name, str(err).splitlines()[0] if str(err) else type(err).__name__)


def _unnested(folder: Path) -> Path:
    """The one subfolder that holds a pack's ONNX files where ``folder`` itself holds none: a pack's
    zip unpacked into a folder of its name leaves ``antelopev2/antelopev2/*.onnx``."""
    if any(folder.glob("*.onnx")):
        return folder
    inner = [sub for sub in folder.iterdir() if sub.is_dir() and any(sub.glob("*.onnx"))]
    if len(inner) != 1:
        return folder
    log.info("model pack %s: its files are in %s", folder.name, inner[0])
    return inner[0]


def resolve_pack(name: str, root: str | os.PathLike[str] | None = None, *, download: bool = True) -> ModelPack:
    """Find the pack ``name`` under ``root`` (or ``name`` itself if it is a folder).

    Raises ``ModelPackError`` naming the folder and the files expected when the pack
    is missing or lacks a detector or recogniser.
    """
    direct = Path(name).expanduser()
    if direct.is_dir() and (os.sep in name or name.startswith(".")):
        folder = direct.resolve()
    else:
        base = Path(root).expanduser() if root else default_model_root()
        folder = base / name
        if not folder.is_dir() and (base / "models" / name).is_dir():
            # --model-root ~/.insightface, where insightface keeps its packs one folder further down
            log.info("model pack %s: taken from %s", name, base / "models" / name)
            folder = base / "models" / name
        if not folder.is_dir() and download and name in KNOWN_PACKS:
            _try_download(name, base)
    label = folder.name  # the pack's name, whichever folder inside it holds the files
    if folder.is_dir():
        folder = _unnested(folder)
    if not folder.is_dir():
        raise ModelPackError(
            f"model pack '{name}' not found: {folder} does not exist (expected {_expected(name)}). "
            f"Copy the pack there, or point --model-root / {MODEL_ROOT_ENV} at the folder that holds it"
        )
    roles: dict[str, Path] = {}
    for path in sorted(folder.glob("*.onnx")):
        role = classify(path)
        if role is not None and role not in roles:
            roles[role] = path
    missing = [r for r in ("detection", "recognition") if r not in roles]
    if missing:
        found = ", ".join(p.name for p in sorted(folder.glob("*.onnx"))) or "no .onnx files"
        if inner := sorted(sub.name for sub in folder.iterdir() if sub.is_dir() and any(sub.glob("*.onnx"))):
            found += f"; folders holding some: {', '.join(inner)} (name one of them as the pack)"
        raise ModelPackError(
            f"model pack '{name}' at {folder} has no {' or '.join(missing)} model "
            f"(found: {found}; expected {_expected(name)})"
        )
    return ModelPack(name=label, folder=folder, detector=roles["detection"],
                     recognizer=roles["recognition"], genderage=roles.get("genderage"))
