"""Where the files come from: a local folder or any URI pyarrow's filesystems read.

``list_files`` walks SOURCE at any depth once, in the driver, and keeps only each
file's path and size, in Arrow columns (about 60 bytes a file: the one thing of the
job that grows with the number of files). The files themselves are read later, by
the actors that classify them, through the same pyarrow filesystem (``read``), so
a file's bytes exist only while its batch is being classified.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

LISTING = pa.schema([("path", pa.string()), ("size", pa.int64())])


@dataclass(frozen=True)
class Source:
    """A filesystem, the path in it that was asked for, and how rows name its files."""

    filesystem: pafs.FileSystem
    root: str
    prefix: str  # put before a filesystem path in the rows: "" locally, "s3://" for S3

    def read(self, path: str) -> bytes:
        """One file's bytes (``path`` as the filesystem names it)."""
        with self.filesystem.open_input_stream(path) as stream:
            return stream.read()

    def shown(self, path: str) -> str:
        """How a row names the file: the local path, or the URI of a file in a bucket."""
        return self.prefix + path


def open_source(source: str) -> Source:
    """The filesystem of SOURCE: a local path (relative to here), or a URI such as
    ``s3://bucket/photos`` or ``gs://bucket/photos``. ``ValueError`` if pyarrow
    reads no such scheme."""
    if "://" not in source:
        return Source(pafs.LocalFileSystem(), os.path.abspath(source), "")
    try:
        filesystem, root = pafs.FileSystem.from_uri(source)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"{source}: not a URI pyarrow can read ({exc})") from exc
    scheme = source.split("://", 1)[0]
    return Source(filesystem, root, "" if scheme == "file" else f"{scheme}://")


def list_files(source: Source) -> pa.Table:
    """Every file under the source's root, at any depth (or the root itself if it is a
    file), sorted by path: columns ``path`` and ``size``. ``FileNotFoundError`` if
    the root does not exist."""
    info = source.filesystem.get_file_info(source.root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{source.shown(source.root)}: no such file or folder")
    if info.type == pafs.FileType.File:
        found = [info]
    else:
        selector = pafs.FileSelector(source.root, recursive=True)
        found = source.filesystem.get_file_info(selector)
    files = [f for f in found if f.type == pafs.FileType.File]
    files.sort(key=lambda f: f.path)
    table = pa.table(
        {"path": [f.path for f in files], "size": [f.size for f in files]}, schema=LISTING
    )
    return table


def blocks(listing: pa.Table, rows: int) -> list[pa.Table]:
    """The listing cut into tables of ``rows`` files: the units of work Ray hands out."""
    return [listing.slice(start, rows) for start in range(0, max(len(listing), 1), rows)]
