"""Embedding rows, one per face: what embeddings files hold and every stage passes on.

A module of its own, without the models, so that the stages that only read embeddings
files (clustering, ``embeddings_info``) do not load ONNX.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass
class FaceRows:
    """Embedding rows: one per face. Arrays are aligned with ``paths``."""

    paths: list[str]
    embeddings: NDArray[np.float32]
    detected: NDArray[np.bool_]
    det_score: NDArray[np.float32]
    bbox: NDArray[np.float32]
    face_index: NDArray[np.int32]

    @classmethod
    def empty(cls, dim: int) -> FaceRows:
        return cls([], np.zeros((0, dim), np.float32), np.zeros(0, bool), np.zeros(0, np.float32),
                   np.zeros((0, 4), np.float32), np.zeros(0, np.int32))

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def concat(cls, parts: Sequence[FaceRows], dim: int) -> FaceRows:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty(dim)
        # One copy of each column (``astype`` after ``concatenate`` would make a second: 1 GB more
        # for 500,000 x 512 embeddings).
        return cls(
            [p for part in parts for p in part.paths],
            np.concatenate([p.embeddings for p in parts], dtype=np.float32),
            np.concatenate([p.detected for p in parts], dtype=bool),
            np.concatenate([p.det_score for p in parts], dtype=np.float32),
            np.concatenate([p.bbox for p in parts], dtype=np.float32),
            np.concatenate([p.face_index for p in parts], dtype=np.int32),
        )

    def select(self, index: NDArray[np.intp]) -> FaceRows:
        return FaceRows([self.paths[i] for i in index], self.embeddings[index], self.detected[index],
                        self.det_score[index], self.bbox[index], self.face_index[index])
