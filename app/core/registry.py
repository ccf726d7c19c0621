"""The served model and its versions: initial load, then hot swap of new versions.

A watcher polls the model base folder. A higher integer version is loaded and
warmed up in a thread while the current one keeps serving, then swapped in by
one assignment (requests already preprocessed keep the model they started with).
A version that fails to load is refused with a log line and retried only if its
files change. The heap is frozen while serving (``app.core.heap``); a swap thaws
it so that the replaced version can be freed, and the next tick freezes it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from app.core import heap
from app.core.errors import ModelLoadError, ModelNotReadyError
from app.core.metrics import Metrics
from app.core.model import LoadedModel
from catdog.runtimes import version_dirs

log = logging.getLogger("catdog.registry")
Loader = Callable[[Path], LoadedModel]


def _files_stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Sizes and mtimes of every file in a folder: changes when its content does."""
    return tuple(
        sorted(
            (str(p), p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")
            if p.is_file()
        )
    )


class ModelRegistry:
    """Holds the current ``LoadedModel`` and swaps in new versions."""

    def __init__(self, base: Path, load: Loader, metrics: Metrics) -> None:
        self.base = Path(base)
        self._load = load
        self.metrics = metrics
        self._current: LoadedModel | None = None
        self._refused: dict[int, tuple[tuple[str, int, int], ...]] = {}
        self._settle_due = False  # a swap thawed the heap; freeze it again on the next tick

    @property
    def current(self) -> LoadedModel:
        """The model serving now."""
        if self._current is None:
            raise ModelNotReadyError("no model loaded yet")
        return self._current

    @property
    def ready(self) -> bool:
        """True once a model is loaded and warmed up."""
        return self._current is not None

    def load_initial(self) -> None:
        """Load the highest version; raise ``ModelLoadError`` (naming the path) if it fails."""
        if not self.base.is_dir():
            raise ModelLoadError(
                f"model folder {self.base.resolve()} does not exist "
                "(set CATDOG_MODEL_DIR to a folder holding <version>/saved_model.pb)"
            )
        versions = version_dirs(self.base)
        if not versions:
            raise ModelLoadError(
                f"{self.base}: no integer version folders (expected e.g. {self.base}/1/)"
            )
        self._swap(self._load(versions[max(versions)]))

    async def check_for_update(self) -> bool:
        """Load and swap in a newer version if one appeared; True if swapped."""
        versions = version_dirs(self.base)
        current = int(self.current.version) if self._current else -1
        for number in sorted((v for v in versions if v > current), reverse=True):
            folder = versions[number]
            stamp = await asyncio.to_thread(_files_stamp, folder)
            if self._refused.get(number) == stamp:
                continue
            try:
                model = await asyncio.to_thread(self._load, folder)
            except ModelLoadError as exc:
                self._refused[number] = stamp
                self.metrics.model_loads.labels(result="refused").inc()
                log.error(
                    "refused model version %s, still serving %s: %s",
                    number,
                    self._current.version if self._current else None,
                    exc,
                )
                continue
            self._swap(model)
            return True
        return False

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

    def _swap(self, model: LoadedModel) -> None:
        previous = self._current.version if self._current else None
        if previous is not None:
            # The old version was frozen with the heap; let it be freed once its last
            # batch is done, and freeze again on the watcher's next tick.
            heap.thaw()
            self._settle_due = True
        self._current = model
        self.metrics.set_model_version(model.version, model.runtime_name)
        self.metrics.model_loads.labels(result="loaded").inc()
        log.info(
            "serving model %s version %s on %s (was %s) from %s",
            model.contract.extra.get("name", self.base.name),
            model.version,
            model.runtime_name,
            previous,
            model.path,
        )
