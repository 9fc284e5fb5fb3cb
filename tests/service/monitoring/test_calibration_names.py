"""``/calibration`` and ``/calibration.png`` answer alike for the names they are given: a model or cohort the
monitors never saw is a 404 naming it (and, for a cohort, the known ones); a cohort they saw without labelled
predictions yet is an empty list in the JSON and a 404 saying "yet" for the picture, which has nothing to draw."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from fastapi.testclient import TestClient

from common import keys
from monitors.fleet.results import Bin, QualityReport, SeriesQuality

JSON, PNG = "/v1/models/digits/calibration", "/v1/models/digits/calibration.png"
ROUTES = [pytest.param(JSON, id="json"), pytest.param(PNG, id="png")]


def _series(cohort: str, count: int) -> SeriesQuality:
    return SeriesQuality(
        version="v1",
        cohort=cohort,
        count=count,
        ece=0.05,
        mce=0.1,
        brier_score=None,
        brier_count=0,
        accuracy=0.8,
        accuracy_lower=0.6,
        accuracy_upper=0.9,
        bins=(Bin(lower=0.6, upper=0.8, count=count, mean_confidence=0.7, accuracy=0.8),),
    )


@pytest.fixture
def calibration(make_client: Callable[..., TestClient], redis_client: redis.Redis) -> TestClient:
    """A sidecar slicing by ``region``; the fleet has admitted ``eu`` and ``us``, and the monitor has published
    labelled predictions of ``all`` and ``region=eu`` (none of ``us`` yet)."""
    client = make_client(cohort_keys=("region",))
    redis_client.sadd(keys.MONITORED_MODELS, "digits")
    redis_client.sadd(keys.cohort_values("digits", "region"), "eu", "us")
    report = QualityReport(
        model="digits",
        window_s=3600.0,
        series=(_series("all", 20), _series("region=eu", 20)),
        owner="m1",
        updated_at=1.0,
    )
    redis_client.set(keys.quality_report("digits"), report.model_dump_json())
    return client


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "cohort",
    [
        pytest.param("region=mars", id="value-never-seen"),
        pytest.param("device:phone", id="key-never-sliced"),
    ],
)
def test_a_cohort_the_monitors_never_saw_is_a_404_naming_it_and_the_known_ones(
    calibration: TestClient, route: str, cohort: str
) -> None:
    """The JSON answered 200 with empty series (as if no labels had come yet) while the picture answered 404."""
    answer = calibration.get(route, params={"cohort": cohort})
    assert answer.status_code == 404, answer.text
    body = answer.json()
    assert body["field"] == "cohort"
    assert cohort.replace(":", "=") in body["error"]
    assert "all, region=__other__, region=eu, region=us" in body["error"], body["error"]


@pytest.mark.parametrize("route", ROUTES)
def test_a_cohort_that_is_no_slice_name_is_a_422(calibration: TestClient, route: str) -> None:
    answer = calibration.get(route, params={"cohort": "eu"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "cohort"


@pytest.mark.parametrize("cohort", ["region=eu", "region:eu", "all"])
def test_a_cohort_with_labelled_predictions_is_answered_by_both(calibration: TestClient, cohort: str) -> None:
    series = calibration.get(JSON, params={"cohort": cohort}).json()["series"]
    assert [s["cohort"] for s in series] == [cohort.replace(":", "=")]
    picture = calibration.get(PNG, params={"cohort": cohort})
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")


@pytest.mark.parametrize("cohort", ["region=us", "region=__other__"])
def test_a_known_cohort_without_labelled_predictions_yet_is_empty_and_has_no_picture_yet(
    calibration: TestClient, cohort: str
) -> None:
    """Seen by the fleet (its value admitted, or the key's shared slice), labels not joined yet: the JSON lists
    no series; the picture, which draws one, is a 404 that says so, not that the cohort is unknown."""
    answer = calibration.get(JSON, params={"cohort": cohort})
    assert answer.status_code == 200, answer.text
    assert answer.json()["series"] == []
    picture = calibration.get(PNG, params={"cohort": cohort})
    assert picture.status_code == 404, picture.text
    assert picture.json()["field"] == "cohort" and "yet" in picture.json()["error"]


@pytest.mark.parametrize("route", ROUTES)
def test_a_model_the_monitors_never_saw_is_a_404_naming_the_model(calibration: TestClient, route: str) -> None:
    answer = calibration.get(route.replace("digits", "nope"), params={"cohort": "region=eu"})
    assert answer.status_code == 404, answer.text
    assert answer.json()["field"] == "model"


def test_before_any_report_a_known_cohort_is_empty_and_an_unknown_one_a_404(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    client = make_client(cohort_keys=("region",))
    redis_client.sadd(keys.MONITORED_MODELS, "digits")
    redis_client.sadd(keys.cohort_values("digits", "region"), "eu")
    assert client.get(JSON, params={"cohort": "region=eu"}).json()["series"] == []
    assert client.get(PNG, params={"cohort": "region=eu"}).status_code == 404
    for route in (JSON, PNG):
        unknown = client.get(route, params={"cohort": "region=mars"})
        assert unknown.status_code == 404 and unknown.json()["field"] == "cohort", unknown.text
        assert "all, region=__other__, region=eu" in unknown.json()["error"]


@pytest.fixture
def separators_in_values(make_client: Callable[..., TestClient], redis_client: redis.Redis) -> TestClient:
    """A sidecar slicing by ``region``, whose values ``a=b`` and ``a:b`` hold the two separators, both labelled."""
    client = make_client(cohort_keys=("region",))
    redis_client.sadd(keys.MONITORED_MODELS, "digits")
    redis_client.sadd(keys.cohort_values("digits", "region"), "a=b", "a:b")
    series = (_series("all", 20), _series("region=a=b", 20), _series("region=a:b", 20))
    report = QualityReport(model="digits", window_s=3600.0, series=series, owner="m1", updated_at=1.0)
    redis_client.set(keys.quality_report("digits"), report.model_dump_json())
    return client


@pytest.mark.parametrize(
    ("cohort", "expected"),
    [
        pytest.param("region=a=b", "region=a=b", id="equals-spelling-value-with-equals"),
        pytest.param("region:a=b", "region=a=b", id="colon-spelling-value-with-equals"),
        pytest.param("region=a:b", "region=a:b", id="equals-spelling-value-with-colon"),
        pytest.param("region:a:b", "region=a:b", id="colon-spelling-value-with-colon"),
    ],
)
def test_both_spellings_find_a_slice_whose_value_holds_a_separator(
    separators_in_values: TestClient, cohort: str, expected: str
) -> None:
    """``region:a=b`` was split at its ``=`` (key ``region:a``) and answered 404."""
    answer = separators_in_values.get(JSON, params={"cohort": cohort})
    assert answer.status_code == 200, answer.text
    assert [s["cohort"] for s in answer.json()["series"]] == [expected]
    assert separators_in_values.get(PNG, params={"cohort": cohort}).status_code == 200


def test_text_with_both_separators_and_no_known_key_is_read_at_its_equals(separators_in_values: TestClient) -> None:
    """Neither ``device`` nor ``device:a`` is this sidecar's key: the ``key=value`` reading names the slice."""
    answer = separators_in_values.get(JSON, params={"cohort": "device:a=b"})
    assert answer.status_code == 404, answer.text
    assert answer.json()["field"] == "cohort" and "device:a=b" in answer.json()["error"]
