"""Settings: a limit that could never be met is refused when the service starts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.core.config import Settings, settings_table


def test_a_file_limit_above_the_in_flight_limit_is_refused() -> None:
    with pytest.raises(ValidationError, match="never fits"):
        Settings(max_images_in_flight=2, max_files_per_request=4)


def test_settings_come_from_catdog_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATDOG_MAX_IMAGES_IN_FLIGHT", "7")
    monkeypatch.setenv("CATDOG_MAX_FILES_PER_REQUEST", "3")
    settings = Settings()
    assert (settings.max_images_in_flight, settings.max_files_per_request) == (7, 3)


def test_the_settings_table_lists_every_setting_with_its_default() -> None:
    table = settings_table()
    for name, field in Settings.model_fields.items():
        assert f"`CATDOG_{name.upper()}`" in table
        assert field.description and field.description in table
    assert "| `CATDOG_MAX_IMAGES_IN_FLIGHT` | `64` |" in table


def test_image_formats_are_read_as_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATDOG_IMAGE_FORMATS", '["JPEG","PNG"]')
    assert Settings().image_formats == ("JPEG", "PNG")


def test_an_unknown_image_format_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATDOG_IMAGE_FORMATS", '["JPEG","EPS"]')
    with pytest.raises(ValidationError, match="EPS"):
        Settings()
