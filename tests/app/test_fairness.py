"""One client's share of the images in flight (``CATDOG_MAX_IMAGES_PER_CLIENT``).

A client at its limit gets the 503 of a full queue, counted apart, while another
client is still served; the limit is checked before the body is read and again
when the request's images are admitted; without a limit nothing changes.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from app.core.batcher import Admission, Upload
from app.core.errors import QueueFullError
from app.core.gate import client_key
from app.core.metrics import Metrics
from servicekit import value
from tests.app.helpers import (
    HTTP_TIMEOUT,
    batch_upload,
    good_image,
    serve,
    settings_for,
    upload,
)

GREEDY, POLITE = "10.0.0.1", "10.0.0.2"


def test_admission_holds_each_client_to_its_share() -> None:
    admission = Admission(limit=10, metrics=Metrics(), per_client=2)
    with admission.admit(2, Upload(GREEDY)):
        refused = pytest.raises(QueueFullError, match="this client has 2 images in flight")
        with refused, admission.admit(1, Upload(GREEDY)):
            pass
        with admission.admit(2, Upload(POLITE)):
            assert admission.by_client == {GREEDY: 2, POLITE: 2}
            assert admission.in_flight == 4
    assert admission.by_client == {}
    with admission.admit(2, Upload(GREEDY)):
        pass
    assert admission.metrics.client_capped._value.get() == 1  # noqa: SLF001


def test_without_a_limit_a_client_may_take_all_room() -> None:
    admission = Admission(limit=3, metrics=Metrics())
    refused = pytest.raises(QueueFullError, match="3 images in flight")
    with admission.admit(3, Upload(GREEDY)), refused, admission.admit(1, Upload(POLITE)):
        pass


def client_from(app: object, address: str) -> httpx.AsyncClient:
    """An in-process client whose requests come from ``address``."""
    transport = httpx.ASGITransport(app=app, client=(address, 40000))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://test", timeout=HTTP_TIMEOUT)


async def test_a_client_at_its_limit_waits_while_others_are_served(
    tiny_model_base: Path,
) -> None:
    settings = settings_for(tiny_model_base, max_files_per_request=2, max_images_per_client=2)
    async with serve(settings) as (app, client):
        admission = app.state.service.admission
        async with client_from(app, GREEDY) as greedy, client_from(app, POLITE) as polite:
            with admission.admit(2, Upload(GREEDY)):  # two of its images are being answered
                refused = await greedy.post("/predict", files=upload(good_image()))
                served = await polite.post("/predict", files=upload(good_image()))
            assert refused.status_code == 503, refused.text
            assert "this client has 2 images in flight" in refused.json()["detail"]
            assert refused.headers["retry-after"] == "1"
            assert served.status_code == 200, served.text
            with admission.admit(1, Upload(GREEDY)):  # one more fits; a pair does not
                single = await greedy.post("/predict", files=upload(good_image()))
                pair = await greedy.post(
                    "/predict/batch", files=batch_upload([good_image(1), good_image(2)])
                )
            assert single.status_code == 200, single.text
            assert pair.status_code == 503, pair.text
            again = await greedy.post("/predict/batch", files=batch_upload([good_image(3)] * 2))
            assert again.status_code == 200, again.text
        metrics = (await client.get("/metrics")).text
        assert value(metrics, "catdog_client_capped_total") == 2
        assert value(metrics, "catdog_rejected_total") == 0
        assert admission.by_client == {}


def test_a_limit_below_a_full_request_is_refused(tiny_model_base: Path) -> None:
    with pytest.raises(ValidationError, match="a full request would never fit"):
        settings_for(tiny_model_base, max_files_per_request=8, max_images_per_client=4)


@pytest.mark.parametrize(
    ("spellings", "key"),
    [
        (["2001:db8::7", "2001:DB8::7", "2001:db8:0:0::7", "[2001:db8::7]"], "2001:db8::7"),
        (["10.0.0.1", "::ffff:10.0.0.1"], "10.0.0.1"),
        (["a-unix-socket"], "a-unix-socket"),
    ],
)
def test_each_address_is_counted_under_one_key(spellings: list[str], key: str) -> None:
    assert {client_key(s) for s in spellings} == {key}
