"""The model contract: what a catdog model takes and returns.

One place holds the class order, input size and pixel scaling. ``export`` writes
the contract into ``metadata.json`` beside each SavedModel, and the service reads
it back from there, so a model always travels with the facts needed to feed it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CLASS_NAMES: tuple[str, ...] = ("cat", "dog")
IMAGE_SIZE: tuple[int, int] = (224, 224)  # (height, width)
SCALING = "x/255"  # float32 pixels in [0, 1]
METADATA_FILE = "metadata.json"
LITERT_FILE = "model.tflite"  # the LiteRT form of a version, beside its SavedModel
SIGNATURE = "serving_default"


@dataclass(frozen=True)
class ModelContract:
    """Input size, scaling and output classes of an exported model."""

    class_names: tuple[str, ...] = CLASS_NAMES
    image_size: tuple[int, int] = IMAGE_SIZE
    scaling: str = SCALING
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one model input: (height, width, 3)."""
        return (*self.image_size, 3)

    def to_dict(self) -> dict[str, Any]:
        """The contract plus any extra metadata, ready for JSON."""
        data = asdict(self)
        extra = data.pop("extra")
        data["class_names"] = list(self.class_names)
        data["image_size"] = list(self.image_size)
        data["input"] = {"dtype": "float32", "shape": [None, *self.input_shape], "range": [0, 1]}
        data["output"] = {
            "dtype": "float32",
            "shape": [None, len(self.class_names)],
            "meaning": "softmax probabilities in class_names order",
        }
        return {**extra, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelContract:
        """Read a contract back from metadata, validating the fields it needs."""
        try:
            names = tuple(str(n) for n in data["class_names"])
            height, width = (int(v) for v in data["image_size"])
            scaling = str(data["scaling"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"metadata lacks a valid contract field: {exc!r}") from exc
        if len(names) < 2 or height < 1 or width < 1:
            raise ValueError(f"metadata contract is not usable: {names}, {height}x{width}")
        if scaling != SCALING:
            raise ValueError(f"unsupported scaling {scaling!r}; this project uses {SCALING!r}")
        known = {"class_names", "image_size", "scaling", "input", "output"}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(class_names=names, image_size=(height, width), scaling=scaling, extra=extra)

    def write(self, directory: str | Path) -> Path:
        """Write ``metadata.json`` into a model version folder."""
        path = Path(directory) / METADATA_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, directory: str | Path) -> ModelContract:
        """Read ``metadata.json`` from a model version folder."""
        path = Path(directory) / METADATA_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ValueError(f"{path}: no {METADATA_FILE} beside the SavedModel") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_dict(data)
