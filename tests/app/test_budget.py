"""The decoding pixel budget: big decodes take turns, small ones share, nothing leaks."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.service import TRIM_ABOVE_PIXELS, PixelBudget
from tests import images
from tests.app.helpers import good_image, serve, settings_for, upload

NOT_YET_S = 0.3  # how long a thread is given to (wrongly) get in


def hold_in_thread(budget: PixelBudget, pixels: int) -> tuple[threading.Event, threading.Event]:
    """Start a thread that holds ``pixels``: (entered, release) events."""
    entered, release = threading.Event(), threading.Event()

    def run() -> None:
        with budget.hold(pixels):
            entered.set()
            release.wait(10)

    threading.Thread(target=run, daemon=True).start()
    return entered, release


def test_a_second_big_decode_waits_for_the_first() -> None:
    budget = PixelBudget(100)
    first_in, first_done = hold_in_thread(budget, 60)
    assert first_in.wait(5)
    second_in, second_done = hold_in_thread(budget, 60)
    assert not second_in.wait(NOT_YET_S)  # 60 + 60 > 100
    first_done.set()
    assert second_in.wait(5)
    second_done.set()


def test_small_decodes_share_the_budget() -> None:
    budget = PixelBudget(100)
    holders = [hold_in_thread(budget, 30) for _ in range(3)]
    assert all(entered.wait(5) for entered, _ in holders)
    assert budget.free == 10
    for _, release in holders:
        release.set()


def test_an_image_larger_than_the_budget_takes_all_of_it() -> None:
    budget = PixelBudget(100)
    with budget.hold(5_000):
        assert budget.free == 0
    assert budget.free == 100


def test_the_budget_is_given_back_when_decoding_fails() -> None:
    budget = PixelBudget(100)
    with pytest.raises(RuntimeError), budget.hold(70):
        raise RuntimeError("corrupt")
    assert budget.free == 100


def test_memory_is_given_back_after_a_large_image_only() -> None:
    trims: list[int] = []
    budget = PixelBudget(200_000_000, trim=lambda: trims.append(1))
    with budget.hold(TRIM_ABOVE_PIXELS - 1):
        pass
    assert trims == []
    with budget.hold(TRIM_ABOVE_PIXELS):
        assert trims == []  # after decoding, not before
    assert trims == [1]


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        PixelBudget(0)


async def test_the_service_decodes_through_its_budget(tiny_model_base: Path) -> None:
    settings = settings_for(tiny_model_base, decode_pixel_budget=5_000)
    async with serve(settings) as (app, client):
        budget = app.state.service.pixel_budget
        assert budget.total == 5_000
        seen: list[int] = []
        hold = budget.hold

        @contextlib.contextmanager
        def recording_hold(pixels: int) -> Iterator[None]:
            seen.append(pixels)
            with hold(pixels):
                yield

        budget.hold = recording_hold  # the classifier looks it up for every image
        photo = images.encode(images.noisy((120, 90)), "PNG")
        for data in (photo, good_image()):
            response = await client.post("/predict", files=upload(data))
            assert response.status_code == 200, response.text
        assert seen[0] == 120 * 90  # more than the budget: it took all of it, and passed
        assert len(seen) == 2
        assert budget.free == 5_000
