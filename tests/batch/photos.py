"""The batch tests' folder of files and what the service answers for each.

``write_folder`` makes real files at several depths: pet JPEGs and a PNG that
classify, a truncated JPEG, a text file named ``.jpg``, an empty PNG and a file
over the upload limit.
``service_answers`` posts every one of them to ``/predict`` of the real app (the
in-process app of ``tests/app/helpers.py``, on LiteRT, as the job runs) and
returns each file's JSON answer (or ``{"detail": ...}``) by absolute path.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests import images
from tests.app.helpers import serve, settings_for, upload

OVER_THE_LIMIT = 10 * 1024 * 1024 + 1  # bytes: above the service's default upload limit
GOOD = {
    "cat.1.jpg": lambda: images.pet_jpeg_bytes("cat", (40, 30), 1),
    "sub/dog.2.jpg": lambda: images.pet_jpeg_bytes("dog", (32, 32), 2),
    "sub/deeper/cat.3.jpg": lambda: images.pet_jpeg_bytes("cat", (64, 48), 3),
    "sub/deeper/dog.4.png": lambda: images.encode(images.pet("dog", (50, 50), 4), "PNG"),
    "dog.5.jpg": lambda: images.pet_jpeg_bytes("dog", (200, 200), 5),
}
BAD = {
    "truncated.jpg": lambda: images.truncated_jpeg_bytes((64, 64)),
    "sub/notes.jpg": lambda: images.text_bytes("a text file named like a photo\n"),
    "empty.png": lambda: images.EMPTY,
    "sub/huge.jpg": lambda: images.jpeg_bytes() + bytes(OVER_THE_LIMIT),  # read by size only
}


def write_folder(root: Path) -> Path:
    """Every file of ``GOOD`` and ``BAD`` under ``root``; returns ``root``."""
    for name, make in {**GOOD, **BAD}.items():
        images.write(root / name, make())
    return root


def service_answers(model_base: Path, root: Path) -> dict[str, dict[str, Any]]:
    """``/predict``'s JSON for every file under ``root``, by absolute path."""

    async def ask() -> dict[str, dict[str, Any]]:
        answers = {}
        async with serve(settings_for(model_base, runtime="litert")) as served:
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                response = await served.client.post("/predict", files=upload(path.read_bytes()))
                answers[str(path.resolve())] = response.json()
        return answers

    return asyncio.run(ask())
