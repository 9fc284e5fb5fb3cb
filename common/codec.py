"""The one array codec: a numpy array as JSON — little-endian bytes in base64, with shape and dtype.

Used wherever an array travels inside JSON (drift states, queue messages' model inputs,
stored attribution maps). Never pickle; a size that does not fit the shape is refused.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, ClassVar, Literal, Self

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

MAX_DIMS = 8
"""Most dimensions of a tensor the sidecar takes (scores, embedding, input) or stores (a sampled input)."""
DTYPES = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "float16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "bool",
    )
}
"""The dtypes an encoded array may have, as little-endian numpy dtypes."""
DtypeName = Literal[
    "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"
]


class EncodedArray(BaseModel):
    """``{"shape", "dtype", "data"}``: the same fields, in the same order, as the ingest API's ``input``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    subject: ClassVar[str] = "encoded array"
    """How :meth:`decode` errors name the array."""
    decode_error: ClassVar[type[ValueError]] = ValueError
    """What :meth:`decode` raises."""

    shape: tuple[int, ...] = Field(max_length=8)
    dtype: DtypeName
    data: str
    """Base64 of the little-endian bytes, C order."""

    @classmethod
    def of(cls, array: NDArray[Any]) -> Self:
        name = array.dtype.name
        if name not in DTYPES:
            raise ValueError(f"cannot encode dtype {name}: use one of {', '.join(DTYPES)}")
        raw = np.ascontiguousarray(array, dtype=DTYPES[name]).tobytes()
        return cls.model_validate({"shape": array.shape, "dtype": name, "data": base64.b64encode(raw).decode()})

    def decode(self) -> NDArray[Any]:
        """The array in native byte order; :attr:`decode_error` on data that is not base64 or does not fit."""
        wire = DTYPES[self.dtype]
        try:
            raw = base64.b64decode(self.data, validate=True)
        except binascii.Error as error:
            raise self.decode_error(f"{self.subject}: not base64 ({error})") from None
        if len(raw) != int(np.prod(self.shape)) * wire.itemsize:
            raise self.decode_error(
                f"{self.subject}: {len(raw)} bytes do not fit shape {list(self.shape)} of {self.dtype}"
            )
        return np.frombuffer(raw, dtype=wire).reshape(self.shape).astype(wire.newbyteorder("="))


class ScaledHalf(BaseModel):
    """An array kept compactly: ``values / scale`` as float16 in the array codec, ``scale`` the largest
    magnitude (so float16's range and precision are spent where the values are). Maps and activations."""

    model_config = ConfigDict(frozen=True)

    shape: tuple[int, ...]
    scale: float
    data: str

    @staticmethod
    def encoded(values: NDArray[Any]) -> dict[str, Any]:
        """``shape``, ``scale`` and ``data`` of finite ``values``, for a subclass's constructor."""
        scale = float(np.abs(values).max(initial=0.0)) or 1.0
        half = EncodedArray.of((values / scale).astype(np.float16))
        return {"shape": half.shape, "scale": scale, "data": half.data}

    def to_array(self) -> NDArray[np.float32]:
        half = EncodedArray(shape=self.shape, dtype="float16", data=self.data).decode()
        return half.astype(np.float32) * np.float32(self.scale)
