"""Events as the caller hands them over, and as the sidecar reads them.

Two steps, split between two threads on purpose:

* ``snapshot`` runs inside ``log()``, on the caller's thread: it only takes a private copy of each
  tensor (a torch tensor is detached and moved to the CPU, an array copied, a list copied down to its
  numbers), so the caller may reuse its buffers at once. It does no encoding.
* ``encode_event`` runs on the sender (thread or executor): it turns one snapshot into JSON bytes.
  Events are encoded one at a time so the sender never holds the GIL for a whole batch.

numpy is used when the caller's process already imported it (``sys.modules``); the client never
imports numpy or torch itself, and works on plain lists without either.
"""

from __future__ import annotations

import array
import base64
import contextlib
import json
import math
import operator
import sys
from typing import Any, Literal

TensorEncoding = Literal["json", "compact"]

DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8")
"""The dtypes the sidecar reads in a ``{"shape", "dtype", "data"}`` tensor."""
TENSOR_FIELDS = ("logits", "probabilities", "embedding")


def _numpy() -> Any:
    return sys.modules.get("numpy")


def snapshot_tensor(value: Any) -> Any:
    """A private copy of ``value`` (torch tensor, numpy array, list or tuple), cheap enough for ``log()``."""
    if isinstance(value, list | tuple):
        return _copy_list(value)
    if hasattr(value, "detach"):  # a torch tensor, duck-typed: torch is never imported here
        value = value.detach()
        if hasattr(value, "cpu"):
            value = value.cpu()
        try:
            return value.numpy().copy()
        except (TypeError, RuntimeError):  # bfloat16 and other dtypes numpy lacks, or no numpy at all
            return value.float().tolist() if hasattr(value, "float") else value.tolist()
    np = _numpy()
    if np is not None and isinstance(value, np.ndarray):
        return value.copy()
    if np is not None and hasattr(value, "__array__"):
        return np.array(value, copy=True)
    if hasattr(value, "tolist"):
        return value.tolist()
    return list(value)


def _copy_list(value: list[Any] | tuple[Any, ...]) -> list[Any]:
    """A (nested) list copied down to its numbers, as lists: the rows may be the caller's buffers too.

    A level is taken as rows when its first item is a list or tuple (as ``_tensor_bytes`` counts it): a copy in C
    per row of numbers, a Python step per row, never per number.
    """
    if value and isinstance(value[0], list | tuple):
        return [_copy_list(row) if isinstance(row, list | tuple) else row for row in value]
    return list(value)


class UnreadableField(ValueError):
    """A field ``log()`` or ``label()`` cannot take as given; the item is counted as rejected."""

    def __init__(self, field: str, error: Exception) -> None:
        super().__init__(f"{field}: {type(error).__name__}: {error}")
        self.field = field


def snapshot_event(fields: dict[str, Any]) -> dict[str, Any]:
    """The event ``log()`` keeps: given fields only, tensors copied, a datetime as RFC 3339 text.

    Raises ``UnreadableField`` for a value that cannot be taken without changing it.
    """
    event: dict[str, Any] = {}
    name = ""
    try:
        for name, value in fields.items():
            if value is None:
                continue
            if name in TENSOR_FIELDS or name == "input":
                value = snapshot_tensor(value)
            elif name == "cohort":
                value = {_cohort_text(k): _cohort_text(v) for k, v in value.items()}
            elif name == "timestamp" and hasattr(value, "isoformat"):
                value = value.isoformat()
            elif name == "label":
                value = label_value(value)
            event[name] = value
    except Exception as error:
        raise UnreadableField(name, error) from error
    return event


def _cohort_text(value: Any) -> str:
    """A cohort key or value: a str as it is, an int as its decimal text; None, a float, a bool or else is refused."""
    if type(value) is str:
        return value
    if isinstance(value, str):  # a subclass (an enum's member): its text, not its repr
        return str.__str__(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int.__repr__(value)
    if not isinstance(value, bool) and str(getattr(value, "dtype", "")) not in ("bool", "torch.bool"):
        with contextlib.suppress(TypeError):
            return str(operator.index(value))  # a numpy or torch integer, as from a dataframe's column
    raise TypeError(f"cohort keys and values must be str (or int), not {type(value).__name__}: {value!r:.40}")


def label_value(value: Any) -> int:
    """A class label as an int: an int, or a float (numpy, torch scalar) with an integral finite value.

    A bool, a fraction, NaN/inf or a non-number is refused (``TypeError``/``ValueError``), never truncated.
    """
    if type(value) is int:
        return value
    if isinstance(value, bool | str | bytes) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool"):
        raise TypeError(f"a label must be an integer, not {type(value).__name__}: {value!r:.40}")
    try:
        return operator.index(value)
    except TypeError:
        pass
    number = float(value)
    if not math.isfinite(number) or not number.is_integer():
        raise ValueError(f"a label must be an integer, not {number!r}")
    return int(number)


def snapshot_bytes(event: dict[str, Any]) -> int:
    """What an event's tensors hold, for the byte bound: an array's ``nbytes``, ``LIST_ITEM_BYTES`` per list number."""
    size = 0
    for name, value in event.items():
        if name in TENSOR_FIELDS or name == "input":
            size += _tensor_bytes(value)
    return size


LIST_ITEM_BYTES = 32
"""What a Python float in a list costs: its 8-byte pointer and its 24-byte object."""


def _tensor_bytes(value: Any) -> int:
    nbytes = getattr(value, "nbytes", None)
    if type(nbytes) is int:  # a numpy array
        return nbytes
    if isinstance(value, list | tuple):
        if value and isinstance(value[0], list | tuple):  # nested: each row counted (a ragged one is not rectangular)
            return sum(_tensor_bytes(row) for row in value)
        return LIST_ITEM_BYTES * len(value)
    return LIST_ITEM_BYTES


def encode_event(event: dict[str, Any], tensor_encoding: TensorEncoding) -> bytes:
    """One event as JSON bytes, with tensors as number lists (``json``) or base64 tensors (``compact``)."""
    body = dict(event)
    for name in TENSOR_FIELDS:
        if name in body:
            body[name] = _compact(body[name]) if tensor_encoding == "compact" else _number_list(body[name])
    if "input" in body:
        body["input"] = _input(body["input"])
    # NaN/Infinity are written as the tokens the sidecar rejects by event and field, so one bad
    # event is reported as rejected instead of failing the whole batch here.
    return json.dumps(body, separators=(",", ":"), allow_nan=True).encode()


def _number_list(value: Any) -> Any:
    return value.reshape(-1).tolist() if hasattr(value, "tolist") else value


def _compact(value: Any) -> dict[str, Any]:
    if hasattr(value, "dtype"):  # a numpy array
        if value.dtype.name not in DTYPES:
            value = value.astype("float64")
        return _tensor(value, keep_shape=False)
    values = array.array("d", value)
    if sys.byteorder == "big":
        values.byteswap()
    return {"dtype": "float64", "shape": [len(values)], "data": base64.b64encode(values.tobytes()).decode()}


def _input(value: Any) -> Any:
    """The model input: an array as the sidecar's ``{"shape", "dtype", "data"}``, a (nested) list as it is."""
    if not hasattr(value, "dtype"):
        return value
    if value.dtype.name not in DTYPES:
        value = value.astype("float32")
    return _tensor(value, keep_shape=True)


def _tensor(value: Any, *, keep_shape: bool) -> dict[str, Any]:
    little = value.astype(value.dtype.newbyteorder("<"), copy=False)
    shape = list(value.shape) if keep_shape else [int(value.size)]
    data = base64.b64encode(little.tobytes()).decode()
    return {"shape": shape, "dtype": value.dtype.name, "data": data}


def encode_label(model: str, request_id: str, label: int) -> bytes:
    return json.dumps({"model": model, "request_id": request_id, "label": label}).encode()


def join_batch(key: str, items: list[bytes]) -> bytes:
    """``{"events": [...]}`` (or ``labels``) from items already encoded."""
    return b'{"' + key.encode() + b'":[' + b",".join(items) + b"]}"


def runs_within(key: str, items: list[bytes], limit_bytes: int) -> tuple[list[list[bytes]], list[int]]:
    """``items`` in order, in runs that ``join_batch(key, run)`` makes bodies of at most ``limit_bytes``;
    and the sizes of the items left out, each too large for a body on its own."""
    empty = len(join_batch(key, []))
    runs: list[list[bytes]] = []
    run: list[bytes] = []
    size = empty
    oversized = []
    for item in items:
        if empty + len(item) > limit_bytes:
            oversized.append(len(item))
            continue
        if run and size + 1 + len(item) > limit_bytes:  # 1: the comma before it
            runs.append(run)
            run, size = [], empty
        size += len(item) + (1 if run else 0)
        run.append(item)
    if run:
        runs.append(run)
    return runs, oversized
