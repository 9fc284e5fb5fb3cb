"""An uploaded drift reference's body read into arrays: JSON ``{embeddings, probabilities?}`` or an ``.npy`` of
embeddings, refused with ``InvalidInput`` naming the body. CPU work: callers run :func:`parsed` in a thread. No
HTTP here."""

from __future__ import annotations

import io
import math
from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import orjson

from common.errors import InvalidInput
from monitors.drift.reference import Reference
from monitors.fleet.references import upload_from_arrays

NPY_TYPES = ("application/octet-stream", "application/x-npy")
"""The content types of an ``.npy`` body (any other is read as JSON)."""


class ModelSlots(Protocol):
    """What an upload needs of the models the sidecar knows (``IngestHandler``)."""

    def register(self, model: str) -> None:
        """Know ``model``; raises ``TooManyModels`` past ``VAI_MAX_MODELS``."""

    def embedding_width_claimed(self, model: str, dims: int) -> AbstractContextManager[None]:
        """Hold ``model``'s embedding width at ``dims`` while the upload is checked and stored."""


def parsed(body: bytes, content_type: str | None) -> tuple[Reference, npt.NDArray[np.float64] | None]:
    """The uploaded reference and its rows' margins, checked; ``InvalidInput`` naming the body when it is not one.
    ``content_type``: the request's header (JSON when absent)."""
    media_type = (content_type or "application/json").split(";")[0].strip().lower()
    try:
        embeddings, probabilities = _arrays(body, media_type)
        return upload_from_arrays(embeddings, probabilities)
    except ValueError as error:  # an array numpy refuses in a way the checks did not foresee: still the body's
        raise InvalidInput(f"body: {error}", field="body") from None


def _arrays(body: bytes, content_type: str) -> tuple[Any, Any]:
    if content_type in NPY_TYPES:
        return _npy(body), None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"body: not valid JSON ({error})", field="body") from None
    if (
        not isinstance(document, dict)
        or "embeddings" not in document
        or set(document) - {"embeddings", "probabilities"}
    ):
        raise InvalidInput(
            'body: send {"embeddings": [[...], ...], "probabilities": [[...], ...]} (probabilities '
            "optional) or an .npy file with Content-Type: application/octet-stream",
            field="body",
        )
    return document["embeddings"], document.get("probabilities")


def _npy(body: bytes) -> Any:
    """An .npy array whose header is checked against the bytes that follow it before anything is allocated:
    ``np.load`` allocates the shape a header declares before reading, so a 100-byte body could claim 70 TiB."""
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)  # type: ignore[no-untyped-call]
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version[0]}.{version[1]} (1.0 and 2.0 are read)")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(stream)  # type: ignore[no-untyped-call]
    except (ValueError, OSError, EOFError, SyntaxError) as error:
        raise InvalidInput(f"body: not a .npy array ({_clean(error)})", field="body") from None
    if dtype.hasobject:
        raise InvalidInput("body: an .npy array of Python objects is not read (pickles run code)", field="body")
    count = math.prod(shape)
    data = memoryview(body)[stream.tell() :]
    if len(data) != count * dtype.itemsize:
        raise InvalidInput(
            f"body: the .npy header declares shape {shape} of {dtype} ({count * dtype.itemsize} bytes), "
            f"but {len(data)} bytes follow it",
            field="body",
        )
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape, order="F" if fortran_order else "C")


def _clean(error: BaseException) -> str:
    """numpy's header errors, without the Python internals some carry (``<ast.Call object at 0x7f…>``)."""
    message = str(error)
    if "Cannot parse header" in message or " object at 0x" in message:
        return "its header is not a valid .npy header: a Python dict literal with descr, fortran_order and shape"
    return message.splitlines()[0] if message else type(error).__name__
