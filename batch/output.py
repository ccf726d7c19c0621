"""Where the rows go: one Parquet, CSV or JSON Lines file, written as they arrive.

The rows stream into OUT batch by batch (pyarrow's Parquet and CSV writers, or a
JSON object per line), so the driver holds one batch of rows at a time. They are
written to ``OUT.partial`` and moved to OUT once every file has its row: a job that
stops half-way leaves no OUT that looks complete. OUT may be a local path or a URI
pyarrow's filesystems write (``s3://bucket/rows.parquet``). ``Summary`` counts
what the rows say for the end-of-job report.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

FORMATS = (".parquet", ".csv", ".jsonl")


def output_format(out: str) -> str:
    """The format OUT's name asks for; ``ValueError`` for any other ending."""
    for suffix in FORMATS:
        if out.lower().endswith(suffix):
            return suffix
    raise ValueError(f"{out}: the output must end in {', '.join(FORMATS)}")


def _open_output(out: str) -> tuple[pafs.FileSystem, str]:
    if "://" in out:
        return pafs.FileSystem.from_uri(out)
    path = os.path.abspath(out)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return pafs.LocalFileSystem(), path


class RowWriter:
    """Appends tables of rows to OUT in its format; ``commit`` makes OUT appear."""

    def __init__(self, out: str, schema: pa.Schema) -> None:
        self.format = output_format(out)
        self.filesystem, self.path = _open_output(out)
        self.partial = self.path + ".partial"
        self.schema = schema
        self.stream = self.filesystem.open_output_stream(self.partial)
        self._writer: pq.ParquetWriter | pacsv.CSVWriter | None = None
        if self.format == ".parquet":
            self._writer = pq.ParquetWriter(self.stream, schema)
        elif self.format == ".csv":
            self._writer = pacsv.CSVWriter(self.stream, schema)

    def write(self, rows: pa.Table) -> None:
        """Append rows (in the output schema)."""
        rows = rows.select(self.schema.names).cast(self.schema)
        if self._writer is not None:
            self._writer.write_table(rows)
            return
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows.to_pylist())
        self.stream.write(lines.encode())

    def commit(self) -> None:
        """Finish the file and move it to OUT."""
        self._close()
        self.filesystem.move(self.partial, self.path)

    def abort(self) -> None:
        """Close and delete the partial file."""
        self._close()
        self.filesystem.delete_file(self.partial)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self.stream.closed:
            self.stream.close()


class Summary:
    """What the rows said: files, errors by reason, labels, the 'neither' count, time."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.files = 0
        self.errors: Counter[str] = Counter()
        self.labels: Counter[str] = Counter()
        self.neither = 0
        self.nodes: Counter[str] = Counter()  # files per Ray node, when rows name it
        self.started = time.perf_counter()
        self.seconds = 0.0
        self.first_row_s: float | None = None  # the actors' start and the first block

    def add(self, rows: pa.Table) -> None:
        """Count a table of output rows."""
        self.files += rows.num_rows
        if self.first_row_s is None:
            self.first_row_s = time.perf_counter() - self.started
        for error in rows.column("error").drop_null().to_pylist():
            self.errors[_kind(error)] += 1
        self.labels.update(rows.column("label").drop_null().to_pylist())
        self.neither += rows.column("known").to_pylist().count(False)
        if "node" in rows.column_names:
            self.nodes.update(rows.column("node").to_pylist())
        self.seconds = time.perf_counter() - self.started

    @property
    def files_per_s(self) -> float:
        """Files (rows) per second since the summary started."""
        return self.files / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values."""
        return {
            "files": self.files,
            "errors": sum(self.errors.values()),
            "errors_by_reason": dict(self.errors.most_common()),
            "labels": dict(sorted(self.labels.items())),
            "neither": self.neither,
            "files_by_node": dict(self.nodes.most_common()),
            "seconds": round(self.seconds, 2),
            "first_row_s": None if self.first_row_s is None else round(self.first_row_s, 2),
            "driver_cpu_s": round(time.process_time(), 2),  # listing, Ray's start, writing
            "files_per_s": round(self.files_per_s, 2),
        }


def _kind(error: str) -> str:
    """An error reason with its numbers and details left out, to count alike ones together
    (``image file is truncated (17 bytes not processed)`` -> ``...truncated (N bytes...``)."""
    return re.sub(r"\d+", "N", error)[:120]
