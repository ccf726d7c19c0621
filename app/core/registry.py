"""The served model's versions: loading and warming up each, which stay loaded (the
version policy, ``CATDOG_VERSION_POLICY``: TF Serving's ``model_version_policy``), hot
swap and refusals, as docs/service.md's "Versions" says.

A new version is loaded in a thread while the loaded ones serve and added by one
assignment; one that fails is refused with a log line and retried only if its files
change. Memory per version is the growth of resident memory while it loaded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app.core import heap
from app.core.errors import ModelLoadError, ModelNotReadyError, VersionNotFoundError
from app.core.metrics import Metrics
from catdog.contract import ModelContract
from catdog.runtimes import LoadedRuntime, load_model, version_dirs, version_number

log = logging.getLogger("catdog.registry")
Stamp = tuple[tuple[str, int, int], ...]
POLICY_PATTERN = r"latest:[1-9][0-9]*|all|specific:[0-9]+(,[0-9]+)*"


@dataclass(frozen=True)
class ImageResult:
    """The model's output for one image."""

    probabilities: np.ndarray
    ood_score: float | None = None


@dataclass
class LoadedModel:
    """A served model version: where it came from and the runtime that runs it."""

    version: str
    path: Path
    runtime: LoadedRuntime = field(repr=False)

    @property
    def contract(self) -> ModelContract:
        """Class names, input size and scaling of this version."""
        return self.runtime.contract

    @property
    def runtime_name(self) -> str:
        """``litert`` or ``tensorflow``."""
        return self.runtime.name

    @property
    def metadata(self) -> dict[str, Any]:
        """Everything ``metadata.json`` says, contract included."""
        return self.contract.to_dict()

    @property
    def ood_threshold(self) -> float | None:
        """Scores above this mark an image as unlike the training photos (None: no signal)."""
        ood = self.contract.extra.get("ood")
        return float(ood["threshold"]) if isinstance(ood, dict) and "threshold" in ood else None

    def infer_rows(self, images: np.ndarray) -> list[ImageResult]:
        """One result per image of a float32 batch [N, H, W, 3] in [0, 1]."""
        out = self.runtime.infer(images)
        probabilities = np.asarray(out.probabilities, dtype=np.float64)
        if probabilities.shape != (len(images), len(self.contract.class_names)):
            raise RuntimeError(f"model {self.version} returned shape {probabilities.shape}")
        scores = [None] * len(images) if out.ood_score is None else out.ood_score.tolist()
        return [ImageResult(p, s) for p, s in zip(probabilities, scores)]

    def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """Run the model once per batch size; refuse a model with non-finite outputs."""
        for size in batch_sizes:
            rows = self.infer_rows(np.zeros((size, *self.contract.input_shape), np.float32))
            if not all(np.all(np.isfinite(r.probabilities)) for r in rows):
                raise ModelLoadError(f"{self.path}: warm-up produced non-finite outputs")


def load_version(path: Path, runtime: str, threads: int, warm_up_batch: int = 1) -> LoadedModel:
    """Load and warm up one version folder, or raise ``ModelLoadError`` naming it."""
    try:
        model = LoadedModel(path.name, path, load_model(path, runtime, threads))
        model.warm_up(tuple(range(1, warm_up_batch + 1)))
    except ModelLoadError:
        raise
    except Exception as exc:  # anything wrong with the folder refuses the version
        raise ModelLoadError(f"{path}: {exc}") from exc
    return model


def _files_stamp(folder: Path) -> Stamp:
    """Sizes and mtimes of every file in a folder: changes when its content does."""
    return tuple(
        sorted(
            (str(p), p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")
            if p.is_file()
        )
    )


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux ``/proc/self/statm``), None elsewhere."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions stay loaded: ``latest:N``, ``all`` or ``specific:1,3``."""

    kind: Literal["latest", "all", "specific"]
    count: int = 1  # latest: how many
    versions: frozenset[int] = frozenset()  # specific: which
    text: str = "latest:1"  # as it was written

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """Read a policy written as in ``CATDOG_VERSION_POLICY``; ``ValueError`` if malformed."""
        if not re.fullmatch(POLICY_PATTERN, text):
            raise ValueError(f"version policy {text!r}: use latest:N, all or specific:1,3")
        kind, _, arguments = text.partition(":")
        if kind == "latest":
            return cls("latest", count=int(arguments), text=text)
        if kind == "specific":
            versions = frozenset(int(v) for v in arguments.split(","))
            return cls("specific", versions=versions, text=text)
        return cls("all", text=text)

    def __str__(self) -> str:
        return self.text

    def initial(self, on_disk: Iterable[int]) -> list[int]:
        """The versions to load at start-up, highest first."""
        chosen = sorted(self._allowed(on_disk), reverse=True)
        return chosen[: self.count] if self.kind == "latest" else chosen

    def candidates(self, on_disk: Iterable[int], loaded: Iterable[int]) -> list[int]:
        """Versions the watcher may load now, highest first (``latest``: only upwards)."""
        loaded = set(loaded)
        floor = max(loaded, default=-1) if self.kind == "latest" else -1
        fresh = (v for v in self._allowed(on_disk) if v > floor and v not in loaded)
        return sorted(fresh, reverse=True)

    def keep(self, loaded: Iterable[int]) -> set[int]:
        """Which of the loaded versions stay loaded."""
        ordered = sorted(loaded, reverse=True)
        return set(ordered[: self.count] if self.kind == "latest" else ordered)

    def _allowed(self, on_disk: Iterable[int]) -> set[int]:
        return {v for v in on_disk if self.kind != "specific" or v in self.versions}


class ModelRegistry:
    """Holds the loaded versions of one model and applies the version policy."""

    def __init__(
        self,
        base: Path,
        load: Callable[[Path], LoadedModel],
        metrics: Metrics,
        policy: VersionPolicy | None = None,
    ) -> None:
        self.base = Path(base)
        self._load = load
        self.metrics = metrics
        self.policy = policy or VersionPolicy("latest")
        self._loaded: dict[int, LoadedModel] = {}  # replaced whole, never mutated
        self._memory: dict[int, int | None] = {}  # RSS growth while each version loaded
        self._refused: dict[int, tuple[Stamp, str]] = {}  # files when refused, and why
        self._settle_due = False  # a version was dropped; freeze the heap again on the next tick

    # ------------------------------------------------------------ lookups

    @property
    def current(self) -> LoadedModel:
        """The highest loaded version: it answers requests that name no version."""
        if not self._loaded:
            raise ModelNotReadyError("no model loaded yet")
        return self._loaded[max(self._loaded)]

    @property
    def ready(self) -> bool:
        """True once a model is loaded and warmed up."""
        return bool(self._loaded)

    @property
    def loaded(self) -> list[LoadedModel]:
        """Every loaded version, highest first."""
        return [self._loaded[v] for v in sorted(self._loaded, reverse=True)]

    @property
    def refused(self) -> dict[int, str]:
        """Versions refused since start-up (and not loaded since), with the reason."""
        return {v: reason for v, (_, reason) in sorted(self._refused.items())}

    def get(self, version: str | None = None) -> LoadedModel:
        """The loaded ``version`` (None: the highest), else ``VersionNotFoundError``."""
        if version is None:
            return self.current
        number = version_number(version)
        if number is not None and str(number) != version:  # "04", "+4": not a version's name
            raise VersionNotFoundError(
                f"no version {version[:64]!r}: versions are written as integers without "
                "leading zeros or signs"
            )
        model = self._loaded.get(number) if number is not None else None
        if model is not None:
            return model
        loaded = ", ".join(m.version for m in self.loaded) or "none"
        if number in self._refused:
            why = f"version {number} was refused: {self._refused[number][1]}"
        elif number is not None and number in version_dirs(self.base):
            why = f"version {number} is not loaded (version policy {self.policy})"
        else:
            why = f"no version {version[:64]!r}"
        raise VersionNotFoundError(f"{why}; loaded versions: {loaded}")

    def memory_bytes(self, model: LoadedModel) -> int | None:
        """How much the process's resident memory grew while ``model`` loaded."""
        return self._memory.get(int(model.version))

    # ------------------------------------------------------------ loading

    def load_initial(self) -> None:
        """Load the policy's versions; ``ModelLoadError`` (naming the path) if any fails."""
        if not self.base.is_dir():
            raise ModelLoadError(
                f"model folder {self.base.resolve()} does not exist "
                "(set CATDOG_MODEL_DIR to a folder holding <version>/saved_model.pb)"
            )
        folders = version_dirs(self.base)
        if not folders:
            raise ModelLoadError(
                f"{self.base}: no integer version folders (expected e.g. {self.base}/1/)"
            )
        chosen = self.policy.initial(folders)
        if not chosen:
            raise ModelLoadError(
                f"{self.base}: none of the versions of policy {self.policy} exists "
                f"(found {', '.join(map(str, sorted(folders)))})"
            )
        self._install(dict(self._measured_load(folders[v]) for v in chosen))

    async def check_for_update(self) -> bool:
        """Load the versions the policy wants that appeared; True if the loaded set changed."""
        folders = version_dirs(self.base)
        added: dict[int, LoadedModel] = {}
        for number in self.policy.candidates(folders, self._loaded):
            if self.policy.kind == "latest" and len(added) == self.policy.count:
                break  # anything lower would be dropped at once
            folder = folders[number]
            stamp = await asyncio.to_thread(_files_stamp, folder)
            refused = self._refused.get(number)
            if refused is not None and refused[0] == stamp:
                continue
            try:
                number, model = await asyncio.to_thread(self._measured_load, folder)
            except ModelLoadError as exc:
                self._refuse(number, stamp, exc)
                continue
            added[number] = model
        if added:
            self._install(added)
        return bool(added)

    async def watch(self, interval: float) -> None:
        """Poll for new versions every ``interval`` seconds, forever."""
        while True:
            await asyncio.sleep(interval)
            if self._settle_due:
                self._settle_due = False
                heap.settle()
            try:
                await self.check_for_update()
            except Exception:  # the watcher must survive a bad folder
                log.exception("checking %s for new versions failed", self.base)

    def _measured_load(self, folder: Path) -> tuple[int, LoadedModel]:
        before = rss_bytes()
        model = self._load(folder)
        after = rss_bytes()
        number = int(model.version)
        self._memory[number] = None if before is None or after is None else max(after - before, 0)
        return number, model

    def _refuse(self, number: int, stamp: Stamp, exc: ModelLoadError) -> None:
        self._refused[number] = (stamp, str(exc))
        self.metrics.model_loads.labels(result="refused").inc()
        log.error(
            "refused model version %s, still serving %s: %s",
            number,
            ", ".join(m.version for m in self.loaded) or None,
            exc,
        )

    def _install(self, added: dict[int, LoadedModel]) -> None:
        """Add freshly loaded versions, drop those the policy no longer keeps (one assignment)."""
        merged = {**self._loaded, **added}
        kept = self.policy.keep(merged)
        dropped = sorted(set(self._loaded) - kept)
        self._loaded = {v: merged[v] for v in sorted(kept)}
        for number in set(self._memory) - kept:
            del self._memory[number]
        for number in added:
            self._refused.pop(number, None)
            self.metrics.model_loads.labels(result="loaded").inc()
        if dropped:
            # The dropped versions were frozen with the heap; let them be freed once their
            # last batch is done, and freeze again on the watcher's next tick.
            heap.thaw()
            self._settle_due = True
        current = self.current
        self.metrics.set_model_version(current.version, current.runtime_name)
        self.metrics.set_loaded_versions(
            {m.version: (m.runtime_name, self._memory.get(int(m.version))) for m in self.loaded}
        )
        log.info(
            "serving model %s versions %s on %s (loaded %s, dropped %s) from %s",
            current.contract.extra.get("name", self.base.name),
            [m.version for m in self.loaded],
            current.runtime_name,
            sorted(added),
            dropped,
            self.base,
        )
