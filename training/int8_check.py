"""The contract an int8 LiteRT file meets before it ships, and the version it makes.

An int8 file cannot agree with its float32 SavedModel to 1e-5, so ``measure``
checks what a user sees instead (``Limits``), on the prepared split:

* on the test split, the int8 file's label agrees with the float32 model's on
  at least 99.5 % of the photos, and its accuracy is at most 0.3 points lower,
  overall and per class;
* on every transform of the robustness suite (``training.robustness``, run on
  the test split as an upload would be), its accuracy is at least 96 %;
* the "neither" threshold is refitted on the int8 file's ``ood_score``: the
  smallest score that 99 % of the validation photos stay under in *each*
  transform of the suite (so photos unlike Kaggle's pass too), and every
  "neither" set (``training.neither``) is still flagged at least 95 %;
* the version folder stays within 10 MiB.

``build_version`` (``python -m training int8``) copies a version's SavedModel
into a hidden folder, adds the int8 ``model.tflite`` (``training.int8``), measures,
and renames the folder into place only when every limit holds; ``metadata.json``
records the figures (``runtimes.litert.contract``) and the new threshold.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from catdog.contract import LITERT_FILE, METADATA_FILE, ModelContract
from catdog.litert import LiteRTModel
from catdog.runtimes import OOD_SCORE, PROBABILITIES, latest_version, version_dirs
from training.data import list_images
from training.evaluate import classification_report
from training.neither import encoded_batches
from training.ood import choose_threshold
from training.robustness import TRANSFORMS, transformed_batches

Outputs = Callable[[np.ndarray], dict[str, np.ndarray]]
BATCH = 32


@dataclass(frozen=True)
class Limits:
    """What the int8 file must meet (see the module docstring)."""

    agreement: float = 0.995
    accuracy_drop: float = 0.003
    robustness: float = 0.96
    pass_rate: float = 0.99
    neither: float = 0.95
    max_bytes: int = 10 * 1024 * 1024


def litert_outputs(content: bytes, threads: int = 2) -> Outputs:
    """A LiteRT file's outputs by name for a float32 batch."""
    return LiteRTModel(content, threads=threads).infer


def run(outputs: Outputs, batches: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """Every output over all batches, concatenated (``ood_score`` flattened)."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        for name, value in outputs(batch).items():
            parts.setdefault(name, []).append(np.asarray(value))
    result = {name: np.concatenate(values) for name, values in parts.items()}
    if OOD_SCORE in result:
        result[OOD_SCORE] = result[OOD_SCORE].reshape(-1)
    return result


def photo_batches(
    paths: Sequence[str], size: tuple[int, int], transform: str = "original", workers: int = 2
) -> Iterator[np.ndarray]:
    """Preprocessed batches of the photos after a robustness transform, in order."""
    return transformed_batches(paths, transform, size, BATCH, workers)


def _report(labels: np.ndarray, out: dict[str, np.ndarray], names: Sequence[str]) -> dict:
    return classification_report(labels, out[PROBABILITIES].argmax(axis=1), names)


def measure(
    int8: Outputs,
    reference: Outputs,
    contract: ModelContract,
    data: str | Path,
    categories: dict[str, list[bytes]],
    old_threshold: float | None = None,
    transforms: Sequence[str] = tuple(TRANSFORMS),
    limit: int | None = None,
    pass_rate: float = Limits.pass_rate,
) -> dict[str, Any]:
    """The figures ``failures`` judges: test agreement and accuracy against
    ``reference`` (the float32 model), the robustness rows, the refitted threshold
    and the share of each "neither" set it flags (also at ``old_threshold``)."""
    data, names, size = Path(data), contract.class_names, contract.image_size
    paths, labels = list_images(data / "test", names, limit)
    tests = {}  # transform -> int8 outputs on the test photos
    for transform in transforms:
        tests[transform] = run(int8, photo_batches(paths, size, transform))
    original = tests.get("original") or run(int8, photo_batches(paths, size))
    floats = run(reference, photo_batches(paths, size))
    float_report, int8_report = _report(labels, floats, names), _report(labels, original, names)
    drops = {"all": float_report["accuracy"] - int8_report["accuracy"]}
    for name in names:
        want, got = float_report["per_class"][name], int8_report["per_class"][name]
        drops[name] = want["accuracy"] - got["accuracy"]
    want, got = floats[PROBABILITIES], original[PROBABILITIES]
    figures: dict[str, Any] = {
        "test": {
            "photos": len(labels),
            "agreement": float(
                np.mean(floats[PROBABILITIES].argmax(1) == original[PROBABILITIES].argmax(1))
            ),
            "max_abs_diff": float(np.max(np.abs(floats[PROBABILITIES] - original[PROBABILITIES]))),
            "float32": float_report,
            "int8": int8_report,
            "accuracy_drop": drops,
        },
        "robustness": {t: _report(labels, out, names) for t, out in tests.items()},
    }
    if OOD_SCORE not in original:
        return figures
    val_paths, _ = list_images(data / "validation", names, limit)
    val_scores = {t: run(int8, photo_batches(val_paths, size, t))[OOD_SCORE] for t in transforms}
    threshold = max(choose_threshold(s, Limits.pass_rate) for s in val_scores.values())
    neither = {
        name: run(int8, encoded_batches(images, size)) for name, images in categories.items()
    }

    def flagged(scores: np.ndarray, at: float | None) -> float | None:
        return None if at is None or not len(scores) else float(np.mean(scores > at))

    figures["threshold"] = {
        "threshold": threshold,
        "old_threshold": old_threshold,
        "validation_pass_rate": {t: 1 - flagged(s, threshold) for t, s in val_scores.items()},
        "test_flagged": {t: flagged(o[OOD_SCORE], threshold) for t, o in tests.items()},
        "test_flagged_old": {t: flagged(o[OOD_SCORE], old_threshold) for t, o in tests.items()},
        "neither_count": {n: len(o.get(OOD_SCORE, [])) for n, o in neither.items()},
        "neither_flagged": {n: flagged(o[OOD_SCORE], threshold) for n, o in neither.items() if o},
        "neither_flagged_old": {
            n: flagged(o[OOD_SCORE], old_threshold) for n, o in neither.items() if o
        },
    }
    return figures


def failures(figures: dict[str, Any], limits: Limits = Limits()) -> list[str]:
    """Every limit the figures break, in words (empty: the file may ship)."""
    problems = []
    test = figures["test"]
    if not test["agreement"] >= limits.agreement:
        problems.append(f"labels agree on {test['agreement']:.2%} of test < {limits.agreement:.1%}")
    for name, drop in test["accuracy_drop"].items():
        if not drop <= limits.accuracy_drop + 1e-9:
            problems.append(f"test accuracy ({name}) {drop * 100:.2f} points below float32")
    for transform, report in figures["robustness"].items():
        if not report["accuracy"] >= limits.robustness:
            problems.append(f"robustness {transform!r}: {report['accuracy']:.2%}")
    ood = figures.get("threshold") or {}
    for transform, rate in (ood.get("validation_pass_rate") or {}).items():
        if not rate >= limits.pass_rate:
            problems.append(f"threshold passes {rate:.2%} of validation {transform!r}")
    for name, share in (ood.get("neither_flagged") or {}).items():
        if not share >= limits.neither:
            problems.append(f"neither set {name!r}: {share:.1%} flagged < {limits.neither:.0%}")
    return problems


def folder_bytes(folder: Path) -> int:
    """The size of every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build_version(
    source: str | Path,
    data: str | Path,
    out: str | Path,
    version: int | None = None,
    calibration: int = 300,
    categories: dict[str, list[bytes]] | None = None,
    limits: Limits = Limits(),
    limit: int | None = None,
    transforms: Sequence[str] = tuple(TRANSFORMS),
    report: str | Path | None = None,
    network: Any = None,
) -> tuple[Path, dict[str, Any]]:
    """Version ``version`` (default: the next) of ``out`` from the exported version
    ``source``: its SavedModel unchanged, an int8 ``model.tflite`` calibrated on
    ``calibration`` training photos of ``data``, checked on ``data`` (about ``limit``
    photos per split, for quick runs). Raises ``ValueError`` listing every broken
    limit, leaving ``out`` untouched. ``report``: a JSON file for the figures, written
    before they are judged. ``network``: the float Keras serving model to quantise
    (default: ``training.int8.rebuild`` of ``source``, made convertible)."""
    from training.export import serving_model
    from training.int8 import float_network, quantize, rebuild
    from training.litert import convert

    source, out, data = Path(source), Path(out), Path(data)
    if not (source / "saved_model.pb").is_file() and version_dirs(source):
        source = latest_version(source)
    contract = ModelContract.read(source)
    size = contract.image_size
    out.mkdir(parents=True, exist_ok=True)
    version = version or max(version_dirs(out), default=0) + 1
    final = out / str(version)
    if final.exists():
        raise ValueError(f"{final} already exists; choose another --version")
    staging = out / f".staging-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    skip = shutil.ignore_patterns(LITERT_FILE, METADATA_FILE, ".*")
    try:
        shutil.copytree(source, staging, ignore=skip)
        if network is None:
            model, score = rebuild(source)
            network = serving_model(float_network(model), score=score)
        calibration_paths, _ = list_images(data / "train", contract.class_names, calibration)
        photos = np.concatenate(list(photo_batches(calibration_paths, size)))
        content = quantize(network, photos)
        reference = litert_outputs(convert(staging))  # float32, as the SavedModel to 1e-5
        old = (contract.extra.get("ood") or {}).get("threshold")
        figures = measure(
            litert_outputs(content), reference, contract, data, categories or {}, old,
            transforms, limit, limits.pass_rate,
        )  # fmt: skip
        if report is not None:
            Path(report).parent.mkdir(parents=True, exist_ok=True)
            Path(report).write_text(json.dumps(figures, indent=2) + "\n")
        (staging / LITERT_FILE).write_bytes(content)
        metadata = _metadata(contract, source, version, out.name, content, figures, calibration)
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        problems = failures(figures, limits)
        total = folder_bytes(staging)
        if total > limits.max_bytes:
            problems.append(f"version folder {total:,} bytes > {limits.max_bytes:,}")
        if problems:
            raise ValueError(f"{source}: the int8 file breaks its contract: " + "; ".join(problems))
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final, figures


def _metadata(
    contract: ModelContract,
    source: Path,
    version: int,
    name: str,
    content: bytes,
    figures: dict[str, Any],
    calibration: int,
) -> dict[str, Any]:
    """The source's metadata with the new version, the int8 file and its figures."""
    import tensorflow as tf

    from training.int8 import KEEP_FLOAT

    data = contract.to_dict()
    data.update(
        version=version,
        name=name,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        derived_from={"version_dir": str(source), "version": contract.extra.get("version")},
    )
    limits = asdict(Limits())
    data["runtimes"] = {
        "tensorflow": {"files": ["saved_model.pb", "variables/"], "signature": "serving_default"},
        "litert": {
            "file": LITERT_FILE,
            "bytes": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
            "converter": (
                "tf.lite.TFLiteConverter (int8 weights and activations, calibrated on "
                f"{calibration} training photos; float32 input and outputs), the layers "
                f"{list(KEEP_FLOAT)} kept float32 by tf.lite.experimental.QuantizationDebugger"
            ),
            "tensorflow": tf.__version__,
            "ai_edge_litert": importlib.metadata.version("ai-edge-litert"),
            "checked": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "contract": {"limits": limits, **figures},
        },
    }
    test = figures["test"]
    data["metrics"] = {  # the served runtime's figures; the SavedModel's are "test_float32"
        "test": {**test["int8"], "runtime": "litert (int8)"},
        "test_float32": {**test["float32"], "runtime": "the SavedModel (float32)"},
    }
    ood = figures.get("threshold")
    if ood:
        share = ood["test_flagged"].get("original")
        data["metrics"]["test"]["ood"] = {
            "threshold": ood["threshold"],
            "flagged_share": share,
            "flagged": None if share is None else round(share * test["photos"]),
        }
    if ood and isinstance(data.get("ood"), dict):
        data["ood"] = {
            **data["ood"],
            "threshold": ood["threshold"],
            "rule_for_threshold": (
                "the smallest int8 ood_score that 99% of the validation photos stay under "
                "in each transform of the robustness suite"
            ),
            "validation_pass_rates": ood["validation_pass_rate"],
            "validation_pass_rate": ood["validation_pass_rate"].get("original"),
            "previous_threshold": ood["old_threshold"],
        }
    return data


def add_command(sub: Any) -> None:
    """Register ``python -m training int8`` on the command line's subparsers."""
    p = sub.add_parser(
        "int8", help="a new version computing in int8 on LiteRT, from an exported version"
    )
    p.add_argument("--from", dest="source", required=True, help="an exported version folder")
    p.add_argument("--data", required=True, help="a prepared split folder")
    p.add_argument("--out", required=True, help="the model base folder (e.g. models/catdog)")
    p.add_argument("--version", type=int, help="default: the next free number")
    p.add_argument("--calibration", type=int, default=300, help="training photos")
    p.add_argument("--extra", action="append", help="a folder of neither images (repeatable)")
    p.add_argument("--limit", type=int, help="about this many photos per split (quick runs)")
    p.add_argument("--report", help="also write the figures to this JSON file")
    p.set_defaults(func=_command)


def _command(args: Any) -> int:
    from training.neither import folder_images, package_samples, synthetic

    categories = synthetic()
    categories["package samples"] = package_samples()
    for folder in args.extra or []:
        categories[Path(folder).name] = folder_images(folder)
    final, figures = build_version(
        args.source, args.data, args.out, args.version, args.calibration, categories,
        limit=args.limit, report=args.report,
    )  # fmt: skip
    test = figures["test"]
    print(
        f"wrote {final}: labels agree on {test['agreement']:.2%} of {test['photos']} test "
        f"photos; int8 {test['int8']['accuracy']:.2%}, float32 {test['float32']['accuracy']:.2%}"
    )
    if "threshold" in figures:
        print(f"'neither' threshold {figures['threshold']['threshold']:.4f}")
    return 0
