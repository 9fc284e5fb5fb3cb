"""The body of ``POST /v1/labels`` as its sender wrote it: the envelope and each label's shape, refused in the
sender's terms (JSON's words and the field at fault, never a class of ours). ``service.feed.labels`` joins the labels.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from common.errors import InvalidInput
from common.names import MODEL_PATTERN
from service.http.body import printable

MAX_LABELS = 10_000
"""Most labels in one ``POST /v1/labels``."""
LABEL_SHAPE = '{"model", "request_id", "label"}'
LABELS_SHAPE = f'{{"labels": [{LABEL_SHAPE}, ...]}}'
"""The body of ``POST /v1/labels``, as its errors spell it."""


class LabelIn(BaseModel):
    """One delayed label of ``POST /v1/labels``: a key of another name is refused (a misspelt ``label`` must not
    read as a label without one), as ``/v1/events`` refuses an event's."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=MODEL_PATTERN)
    request_id: str = Field(min_length=1, max_length=128)
    label: int = Field(ge=0, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, data: Any) -> Any:
        """A label that is no JSON object is refused in JSON's words: pydantic's own error names this class."""
        if not isinstance(data, dict):
            raise PydanticCustomError("label_type", f"expected a label object {LABEL_SHAPE}, got {json_kind(data)}")
        return data


class LabelsIn(BaseModel):
    """The body as documented (OpenAPI); read by :func:`labels_of`, each label by :class:`LabelIn`."""

    model_config = ConfigDict(extra="forbid")

    labels: list[LabelIn] = Field(min_length=1, max_length=MAX_LABELS)


def labels_of(document: Any) -> list[Any]:
    """The labels of a ``POST /v1/labels`` body (parsed), each still to be checked on its own (:class:`LabelIn`).

    ``InvalidInput`` naming what is wrong with the envelope in the sender's terms: not an object; a key other than
    ``labels`` (refused, as ``/v1/events`` and the sampling policy refuse theirs: a misspelt key is never dropped
    unseen; ``events`` says where events go); no ``labels``; or not a list of 1 to :data:`MAX_LABELS`."""
    if not isinstance(document, dict):
        raise InvalidInput(f"body: expected a JSON object {LABELS_SHAPE}, got {json_kind(document)}", field="body")
    for key in document:
        if key != "labels":
            name = printable(key)
            where = "; events go to POST /v1/events" if key == "events" else ""
            raise InvalidInput(
                f'{name}: unknown field; the body holds only "labels": {LABELS_SHAPE}{where}', field=name
            )
    if "labels" not in document:
        raise InvalidInput(f"labels: missing; the body is {LABELS_SHAPE}", field="labels")
    labels = document["labels"]
    if not isinstance(labels, list):
        raise InvalidInput(f"labels: expected a list of {LABEL_SHAPE}, got {json_kind(labels)}", field="labels")
    if not 1 <= len(labels) <= MAX_LABELS:
        raise InvalidInput(f"labels: {len(labels)} labels; send 1 to {MAX_LABELS} in one request", field="labels")
    return labels


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words (for an error)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"
