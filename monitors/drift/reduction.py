"""PCA fitted on the reference embeddings, so detector cost stays flat as the embedding grows."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from common.codec import EncodedArray
from monitors.drift.states import PcaState


class Pca:
    """Projection onto the top principal axes of a reference set (numpy SVD, deterministic)."""

    def __init__(self, *, mean: NDArray[np.float32], components: NDArray[np.float32]) -> None:
        if components.ndim != 2 or mean.shape != (components.shape[1],):
            raise ValueError(f"components must be (k, d) and mean (d,), got {components.shape} and {mean.shape}")
        self._mean = mean.astype(np.float32)
        self._components = components.astype(np.float32)

    @classmethod
    def fit(cls, reference: NDArray[np.float32], *, n_components: int) -> Pca:
        """Fit on ``(n, d)`` reference rows, keeping ``min(n_components, d, n - 1)`` axes."""
        if reference.ndim != 2 or reference.shape[0] < 2:
            raise ValueError(f"PCA needs a (n, d) reference with n >= 2, got shape {reference.shape}")
        data = reference.astype(np.float64)
        mean = data.mean(axis=0)
        _, _, vt = np.linalg.svd(data - mean, full_matrices=False)
        k = min(n_components, data.shape[1], data.shape[0] - 1)
        return cls(mean=mean.astype(np.float32), components=vt[:k].astype(np.float32))

    @property
    def input_dim(self) -> int:
        return int(self._components.shape[1])

    def transform(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected embeddings of shape (n, {self.input_dim}), got {x.shape}")
        return ((x.astype(np.float32) - self._mean) @ self._components.T).astype(np.float32)

    def export_state(self) -> PcaState:
        return PcaState(mean=EncodedArray.of(self._mean), components=EncodedArray.of(self._components))

    @classmethod
    def from_state(cls, state: PcaState) -> Pca:
        return cls(mean=state.mean.decode().astype(np.float32), components=state.components.decode().astype(np.float32))
