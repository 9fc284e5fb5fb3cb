"""Bodies in the Open Inference Protocol's binary tensor extension (as Triton and KServe send them).

With the header ``Inference-Header-Content-Length: N`` the body is N bytes of JSON followed by raw
tensor bytes. A tensor object with ``"parameters": {"binary_data_size": K}`` and no ``data`` takes
the next K bytes, in order of appearance: event by event, and within an event in the order its
tensor fields (``logits``, ``probabilities``, ``embedding``, ``input``) appear in the JSON.

The JSON header holds no bulk numbers, so it is parsed whole into Python objects; each binary
tensor is replaced by a :class:`service.events.tensors.BinaryTensor` over its section (a memoryview, no
copy) and each event then converted like any other. A section that runs past the body, or a size
that disagrees with shape × dtype, rejects that event only, naming the field; later sections are
still cut where the sizes say. A header length past the body, or bytes that no tensor references,
refuse the whole body (the framing itself is wrong).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from common.errors import InvalidInput
from common.numbers import ascii_decimal
from service.decoding.parsing import Decoded, check_count, decode_object
from service.events.tensors import DATA_AND_BINARY, BinaryTensor
from service.http.body import lenient_json

HEADER_LENGTH = "inference-header-content-length"
TENSOR_FIELDS = frozenset(("logits", "probabilities", "embedding", "input"))


def decode_binary(body: bytes, header_length: str, *, max_batch: int) -> list[Decoded]:
    """Every event of a binary-extension ``body`` in order, decoded or rejected; ``InvalidInput`` for the framing."""
    size = ascii_decimal(header_length) or -1
    if not 0 < size <= len(body):
        raise InvalidInput(
            f"{HEADER_LENGTH}: {header_length!r} is not a JSON length within the {len(body)}-byte body",
            field=HEADER_LENGTH,
        )
    try:
        document, finite, unicode = _load(body[:size])
    except InvalidInput:
        if (end := _json_end(body)) is not None and end > size:  # the header goes on past the length given
            raise InvalidInput(
                f"{HEADER_LENGTH}: {size} cuts the JSON header short (it ends at byte {end})", field=HEADER_LENGTH
            ) from None
        raise
    items = _items(document, max_batch=max_batch)
    sections = _Sections(memoryview(body)[size:])
    for item in items:
        if isinstance(item, dict):
            for key, value in item.items():
                if key in TENSOR_FIELDS and _is_binary(value):
                    item[key] = sections.cut(value)
    sections.check_all_used()
    return [decode_object(index, item, finite=finite, unicode=unicode) for index, item in enumerate(items)]


def _load(header: bytes) -> tuple[Any, bool, bool]:
    """The JSON header, whether its numbers are known finite (orjson refuses NaN, Infinity and 1e400), and
    whether its text is known Unicode (orjson refuses invalid UTF-8 and lone surrogates too)."""
    try:
        return orjson.loads(header), True, True
    except orjson.JSONDecodeError:
        pass
    try:  # NaN/Infinity tokens or invalid UTF-8: read them, so that the event and field holding them get named
        document, unicode = lenient_json(header)
        return document, False, unicode
    except RecursionError:  # JSON all the same: deeper than the readers go (one event's field, most likely)
        raise InvalidInput("body: the JSON header is nested too deeply to read", field="body") from None
    except ValueError as error:
        raise InvalidInput(f"body: the JSON header is not valid JSON ({error})", field="body") from None


def _json_end(body: bytes) -> int | None:
    """Where a JSON value at the start of ``body`` ends (latin-1 maps each byte to one character), if one does."""
    try:
        return json.JSONDecoder().raw_decode(body.decode("latin-1"))[1]
    except (ValueError, RecursionError):
        return None


def _items(document: Any, *, max_batch: int) -> list[Any]:
    if isinstance(document, dict) and set(document) == {"events"} and isinstance(document["events"], list):
        items: list[Any] = document["events"]
        check_count(len(items), max_batch)
        return items
    return [document]


def _is_binary(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("parameters"), dict)
        and "binary_data_size" in value["parameters"]
    )


class _Sections:
    """Cuts the bytes after the JSON header into sections, in order."""

    def __init__(self, tail: memoryview) -> None:
        self._tail = tail
        self._offset: int | None = 0
        """Where the next section starts; ``None`` once a size could not be read (later ones are unknown)."""

    def cut(self, tensor: dict[str, Any]) -> BinaryTensor:
        parameters = dict(tensor["parameters"])
        size = parameters.pop("binary_data_size")
        spec = {key: value for key, value in tensor.items() if key != "parameters"}
        if parameters:
            spec["parameters"] = parameters
        if self._offset is None:
            return BinaryTensor(spec, None, "an earlier binary_data_size was unreadable, so this section is unknown")
        if type(size) is not int or size < 0:
            self._offset = None
            return BinaryTensor(spec, None, f"must be a non-negative integer, got {size!r}")
        start, self._offset = self._offset, self._offset + size
        if "data" in tensor:  # its section is there all the same: the later ones start after it
            return BinaryTensor(spec, None, DATA_AND_BINARY)
        if self._offset > len(self._tail):
            return BinaryTensor(
                spec, None, f"section of {size} bytes at offset {start} runs past the body ({len(self._tail)} bytes)"
            )
        return BinaryTensor(spec, self._tail[start : self._offset])

    def check_all_used(self) -> None:
        if self._offset is not None and self._offset < len(self._tail):
            unused = len(self._tail) - self._offset
            raise InvalidInput(
                f"body: {unused} bytes after the binary sections are referenced by no binary_data_size",
                field=HEADER_LENGTH,
            )
