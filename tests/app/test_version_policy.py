"""The version policy: which versions stay loaded, how a request names one, what is refused.

The registry is driven directly with a fake loader (no model runs), so each rule is
checked in milliseconds; test_versions.py covers hot swap with real models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest
from pydantic import ValidationError

from app.core.config import Settings
from app.core.errors import ModelLoadError, VersionNotFoundError
from app.core.metrics import Metrics
from app.core.registry import LoadedModel, ModelRegistry, VersionPolicy
from catdog.contract import ModelContract
from catdog.runtimes import LoadedRuntime
from servicekit import parse_metrics, value


def fake_load(folder: Path) -> LoadedModel:
    """A loaded version that runs nothing; a folder holding ``broken`` is refused."""
    if (folder / "broken").exists():
        raise ModelLoadError(f"{folder}: broken on purpose")
    runtime = LoadedRuntime(
        "fake", ModelContract(), folder, 1, ("probabilities",), lambda x: {"probabilities": x}
    )
    return LoadedModel(folder.name, folder, runtime)


def registry_for(base: Path, policy: str, versions: list[int]) -> ModelRegistry:
    for version in versions:
        (base / str(version)).mkdir(parents=True, exist_ok=True)
    return ModelRegistry(base, fake_load, Metrics(), VersionPolicy.parse(policy))


def loaded(registry: ModelRegistry) -> list[str]:
    return [m.version for m in registry.loaded]


def metrics_of(registry: ModelRegistry) -> str:
    return generate_latest(registry.metrics.registry).decode()


@pytest.mark.parametrize(
    ("text", "initial", "candidates", "keep"),
    [
        ("latest:1", [5], [6], {6}),
        ("latest:2", [5, 4], [6], {6, 5}),
        ("all", [5, 4, 2], [6, 4, 2], {6, 5, 4, 2}),
        ("specific:2,4", [4, 2], [4, 2], {6, 5, 4, 2}),
    ],
)
def test_policy_rules(text: str, initial: list[int], candidates: list[int], keep: set[int]) -> None:
    policy = VersionPolicy.parse(text)
    assert str(policy) == text
    assert policy.initial([2, 4, 5]) == initial
    assert policy.candidates([2, 4, 5, 6], loaded=[5]) == candidates
    assert policy.keep([2, 4, 5, 6]) == keep


@pytest.mark.parametrize("text", ["latest:0", "latest", "newest:2", "specific:", "specific:a"])
def test_malformed_policies_are_refused_at_start(text: str) -> None:
    with pytest.raises(ValueError, match="version policy"):
        VersionPolicy.parse(text)
    with pytest.raises(ValidationError, match="version_policy"):
        Settings(version_policy=text)


async def test_latest_two_keeps_two_and_moves_up(tmp_path: Path) -> None:
    registry = registry_for(tmp_path, "latest:2", [1, 2, 3])
    registry.load_initial()
    assert loaded(registry) == ["3", "2"]
    assert registry.get(None).version == registry.get("3").version == "3"
    assert registry.get("2").version == "2"
    with pytest.raises(VersionNotFoundError, match="version 1 is not loaded .*latest:2"):
        registry.get("1")
    with pytest.raises(VersionNotFoundError, match="no version '9'; loaded versions: 3, 2"):
        registry.get("9")
    for odd in ("x", "²", "-1", ""):  # "²".isdigit() is True, int("²") is not
        with pytest.raises(VersionNotFoundError, match="no version"):
            registry.get(odd)

    (tmp_path / "4").mkdir()
    (tmp_path / "0").mkdir()  # lower: ignored
    assert await registry.check_for_update() is True
    assert loaded(registry) == ["4", "3"]
    assert value(metrics_of(registry), "catdog_model_version", version="4") == 1
    assert await registry.check_for_update() is False


async def test_a_broken_version_is_refused_and_named(tmp_path: Path) -> None:
    registry = registry_for(tmp_path, "latest:2", [1, 2])
    registry.load_initial()
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "broken").write_text("x")
    assert await registry.check_for_update() is False
    assert loaded(registry) == ["2", "1"]
    assert "broken on purpose" in registry.refused[3]
    with pytest.raises(VersionNotFoundError, match="version 3 was refused: .*broken on purpose"):
        registry.get("3")
    assert await registry.check_for_update() is False  # same files: not tried again
    assert value(metrics_of(registry), "catdog_model_loads_total", result="refused") == 1

    (tmp_path / "3" / "broken").unlink()  # repaired
    assert await registry.check_for_update() is True
    assert loaded(registry) == ["3", "2"]
    assert registry.refused == {}


async def test_specific_loads_listed_versions_once_they_exist(tmp_path: Path) -> None:
    registry = registry_for(tmp_path, "specific:1,3", [1, 2])
    registry.load_initial()
    assert loaded(registry) == ["1"]
    with pytest.raises(VersionNotFoundError, match="version 2 is not loaded"):
        registry.get("2")
    (tmp_path / "3").mkdir()
    (tmp_path / "4").mkdir()
    assert await registry.check_for_update() is True
    assert loaded(registry) == ["3", "1"]


def test_start_up_fails_on_any_chosen_version(tmp_path: Path) -> None:
    registry = registry_for(tmp_path, "all", [1, 2])
    (tmp_path / "1" / "broken").write_text("x")
    with pytest.raises(ModelLoadError, match="broken on purpose"):
        registry.load_initial()
    registry = registry_for(tmp_path / "other", "specific:7", [1])
    with pytest.raises(ModelLoadError, match="none of the versions of policy specific:7"):
        registry.load_initial()


def test_memory_is_reported_per_loaded_version(tmp_path: Path) -> None:
    registry = registry_for(tmp_path, "latest:2", [1, 2])
    registry.load_initial()
    for model in registry.loaded:
        assert registry.memory_bytes(model) is not None and registry.memory_bytes(model) >= 0
    samples = parse_metrics(metrics_of(registry))
    assert {s.labels["version"] for s in samples if s.name == "catdog_model_memory_bytes"} == {
        "1",
        "2",
    }
    assert np.isfinite(value(samples, "catdog_model_memory_bytes", version="1"))
