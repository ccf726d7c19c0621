"""The batch job's parts that need no Ray: listing, blocks, the writers, the summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.classify import row_schema
from batch.job import block_rows
from batch.output import RowWriter, Summary
from batch.source import blocks, list_files, open_source

SCHEMA = row_schema(("cat", "dog"))


def _rows() -> pa.Table:
    return pa.table(
        {
            "path": ["/a/cat.jpg", "/a/notes.jpg"],
            "label": ["cat", None],
            "cat": [0.75, None],
            "dog": [0.25, None],
            "known": [False, None],
            "ood_score": [3.5, None],
            "model_version": ["4", "4"],
            "error": [None, "empty file"],
            "node": ["abcd1234", "abcd1234"],  # counted, not written
        }
    )


def test_listing_reads_every_depth_and_refuses_a_missing_source(tmp_path: Path) -> None:
    for name in ("a.jpg", "sub/b.jpg", "sub/deeper/.hidden", "sub/deeper/c.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * len(name))
    listing = list_files(open_source(str(tmp_path)))
    names = [Path(p).relative_to(tmp_path).as_posix() for p in listing.column("path").to_pylist()]
    assert names == ["a.jpg", "sub/b.jpg", "sub/deeper/.hidden", "sub/deeper/c.txt"]
    assert listing.column("size").to_pylist() == [5, 9, 18, 16]
    one = list_files(open_source(f"file://{tmp_path / 'a.jpg'}"))
    assert one.column("path").to_pylist() == [str(tmp_path / "a.jpg")]
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        list_files(open_source(str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="not a URI pyarrow can read"):
        open_source("nosuchscheme://bucket/photos")


def test_blocks_cover_the_listing_and_give_every_actor_some() -> None:
    listing = pa.table({"path": [str(i) for i in range(1000)], "size": list(range(1000))})
    parts = blocks(listing, 128)
    assert sum(len(p) for p in parts) == 1000 and max(len(p) for p in parts) == 128
    assert block_rows(20_000, 8, 2) == 128  # a big job: 16 batches a block
    assert block_rows(9, 1, 2) == 2  # a small one: several blocks per actor
    assert block_rows(3, 8, 4) == 8  # never less than a batch


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_writers_stream_rows_then_move_them_into_place(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / "deep" / f"rows{suffix}"
    writer = RowWriter(str(out), SCHEMA)
    writer.write(_rows())
    writer.write(_rows().slice(0, 1))
    assert not out.exists() and Path(str(out) + ".partial").exists()
    writer.commit()
    assert out.exists() and not Path(str(out) + ".partial").exists()
    if suffix == ".parquet":
        rows = pq.read_table(out).to_pylist()
    elif suffix == ".csv":
        rows = list(csv.DictReader(out.open()))
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and list(rows[0]) == SCHEMA.names
    assert float(rows[0]["cat"]) == 0.75 and rows[1]["error"] == "empty file"


def test_an_aborted_job_leaves_no_output(tmp_path: Path) -> None:
    out = tmp_path / "rows.csv"
    writer = RowWriter(str(out), SCHEMA)
    writer.write(_rows())
    writer.abort()
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="must end in"):
        RowWriter(str(tmp_path / "rows.txt"), SCHEMA)


def test_summary_counts_labels_errors_neither_and_nodes() -> None:
    summary = Summary(total=4)
    summary.add(_rows())
    summary.add(_rows())
    counted = summary.as_dict()
    assert counted["files"] == 4 and counted["errors"] == 2
    assert counted["labels"] == {"cat": 2} and counted["neither"] == 2
    assert counted["errors_by_reason"] == {"empty file": 2}
    assert counted["files_by_node"] == {"abcd1234": 4}
    assert counted["first_row_s"] is not None
