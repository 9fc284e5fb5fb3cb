"""Cuts of a published projection, remembered per body and limit."""

from __future__ import annotations

import orjson
import pytest

from common.errors import Unavailable
from monitors.fleet.views import Projection, ProjectionPoint
from service.monitoring.projection_limits import ProjectionLimits


def _body(points: int, *, x_offset: float = 0.0) -> bytes:
    return (
        Projection(
            model="m",
            method="pca",
            computed_at=1.0,
            seconds=0.1,
            reference_count=points // 2,
            production_count=points - points // 2,
            points=tuple(
                ProjectionPoint(x=i + x_offset, y=-i, source="reference" if i < points // 2 else "production")
                for i in range(points)
            ),
        )
        .model_dump_json()
        .encode()
    )


def test_a_cut_is_the_projection_s_own_and_is_remembered_per_body_and_limit() -> None:
    limits, body = ProjectionLimits(), _body(100)
    first = limits.limited(body, 10, "m")
    assert Projection.model_validate_json(first) == Projection.model_validate_json(body).limited(10)
    assert limits.limited(bytes(body), 10, "m") is first  # an equal body read again from Redis: not parsed again
    other_limit = limits.limited(body, 20, "m")
    assert len(orjson.loads(other_limit)["points"]) == 20
    republished = limits.limited(_body(100, x_offset=0.5), 10, "m")
    assert republished != first  # a new body is never answered from the old one's cut
    assert orjson.loads(republished)["points"][0]["x"] == 0.5


def test_the_memory_is_bounded_and_keeps_the_recently_asked() -> None:
    limits = ProjectionLimits(size=3)
    bodies = [_body(10, x_offset=i) for i in range(4)]
    kept = limits.limited(bodies[0], 5, "m")
    evicted = limits.limited(bodies[1], 5, "m")
    limits.limited(bodies[2], 5, "m")
    assert limits.limited(bodies[0], 5, "m") is kept  # asked again: now the most recent
    limits.limited(bodies[3], 5, "m")  # evicts the least recently asked (bodies[1])
    assert len(limits) == 3
    assert limits.limited(bodies[0], 5, "m") is kept
    again = limits.limited(bodies[1], 5, "m")
    assert again == evicted and again is not evicted  # read anew


def test_an_unreadable_body_is_503_and_not_remembered() -> None:
    limits = ProjectionLimits()
    with pytest.raises(Unavailable) as raised:
        limits.limited(b'{"v": 1, "model": "m"}', 10, "m")
    assert raised.value.status == 503 and "'m'" in str(raised.value)
    assert len(limits) == 0
