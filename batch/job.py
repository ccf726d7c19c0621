"""The job: Ray started or joined, the listing classified by an actor pool, rows written.

Ray Data runs it. The listing (``batch.source``) becomes a dataset of small
blocks; ``map_batches`` hands them to a fixed pool of ``Classifier`` actors (one
CPU and one model each; ``concurrency`` of them, by default one per CPU of the
cluster); the driver iterates over the rows as they come back and writes them
(``batch.output``). Ray Data's streaming executor keeps only a few blocks in
flight per actor, so memory does not grow with the number of files.

Without ``RAY_ADDRESS`` or ``address``, Ray starts inside this process, with a
CPU per usable core and no dashboard; with one, the job joins that cluster and
ships this checkout's ``batch``, ``catdog`` and ``app`` packages to its workers
(``runtime_env`` ``py_modules``), so every node runs the driver's code.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
from tqdm import tqdm

import app
import batch
import catdog
from app.core.service import usable_cpus
from batch.classify import Classifier, Limits, row_schema
from batch.output import RowWriter, Summary, output_format
from batch.source import Source, blocks, list_files, open_source
from catdog.contract import ModelContract
from catdog.runtimes import RUNTIMES, latest_version

BLOCK_BATCHES = 16  # batches per block: a block is one task of an actor (128 files)
ACTOR_START_TIMEOUT_S = 600  # for every actor of the pool to load its model


@dataclass(frozen=True)
class JobOptions:
    """Everything ``python -m batch`` takes."""

    source: str
    output: str
    model: Path | None = None  # a version folder; None: the newest under models/catdog
    runtime: str = "auto"
    batch_size: int = 8  # the service's max batch (an interpreter's buffers grow with it)
    concurrency: int | None = None  # actors; None: one per CPU of the cluster
    address: str | None = None  # a Ray cluster; None: RAY_ADDRESS, else embedded
    progress: bool = True


def model_folder(model: Path | None) -> Path:
    """The version folder to run: ``model`` if it is one, the newest version under it if it
    is a base folder, else the newest under the service's ``models/catdog``."""
    from app.core.config import Settings

    base = Settings().model_dir if model is None else model
    if model is not None and (model / "metadata.json").is_file():
        return model
    return latest_version(base)


def block_rows(files: int, batch_size: int, actors: int) -> int:
    """Files per block: ``BLOCK_BATCHES`` batches, fewer when that would leave an actor
    without a few blocks of its own (a small job still uses every actor)."""
    few = -(-files // (actors * 4))  # four blocks per actor, rounded up
    return max(batch_size, min(batch_size * BLOCK_BATCHES, few))


def start_ray(address: str | None) -> str:
    """Join ``address`` (or ``RAY_ADDRESS``), else start Ray here; return which it did."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address is None:
        ray.init(num_cpus=usable_cpus(), include_dashboard=False, **quiet)
        return "embedded"
    ray.init(address=address, runtime_env={"py_modules": [batch, catdog, app]}, **quiet)
    return f"cluster at {address}"


def run(options: JobOptions, log: Any = print) -> dict[str, Any]:
    """Classify every file of ``options.source`` into ``options.output``; the summary."""
    if options.runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {options.runtime!r}; use one of {', '.join(RUNTIMES)}")
    if options.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {options.batch_size}")
    output_format(options.output)
    version_dir = model_folder(options.model).resolve()
    contract = ModelContract.read(version_dir)
    source = open_source(options.source)
    listing = list_files(source)
    log(f"{len(listing)} files under {options.source}; model {version_dir}")
    where = start_ray(options.address)
    try:
        concurrency = options.concurrency or max(1, int(ray.cluster_resources().get("CPU", 1)))
        log(f"Ray: {where}; {concurrency} actors, batches of {options.batch_size}")
        summary = _classify(options, version_dir, contract, source, listing, concurrency)
    finally:
        ray.shutdown()
    result = {"model": str(version_dir), "ray": where, "concurrency": concurrency}
    return {**result, **summary.as_dict()}


def _classify(
    options: JobOptions,
    version_dir: Path,
    contract: ModelContract,
    source: Source,
    listing: pa.Table,
    concurrency: int,
) -> Summary:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours below counts files, with an ETA
    context.print_on_execution_start = False
    # Every actor is up before the first block is handed out: the work spreads over all of
    # them (and all nodes), not over the first to load its model.
    context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    # A block holds paths, not photos: sending it to the actor on the node that holds it
    # (Ray Data's default) would keep every block on the driver's node.
    context.execution_options.actor_locality_enabled = False
    rows = blocks(listing, block_rows(len(listing), options.batch_size, concurrency))
    dataset = ray.data.from_arrow(rows).map_batches(
        Classifier,
        fn_constructor_kwargs={
            "version_dir": str(version_dir),
            "runtime": options.runtime,
            "source": source,
            "limits": Limits.of_service(),
        },
        batch_size=options.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=1,
    )
    summary = Summary(len(listing))
    writer = RowWriter(options.output, row_schema(contract.class_names))
    bar = tqdm(
        total=len(listing), unit="file", disable=not options.progress, smoothing=0.1, miniters=1
    )
    try:
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.write(table)
            summary.add(table)
            bar.update(table.num_rows)
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    writer.commit()
    return summary
