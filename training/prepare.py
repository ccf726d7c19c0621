"""Split a raw Dogs vs. Cats folder into train/validation/test class folders.

Both Kaggle layouts are understood: a flat folder of ``cat.N.jpg`` / ``dog.N.jpg``
(the competition's ``train/``) and class folders ``Cat/`` and ``Dog/`` (Microsoft's
``PetImages/``). Every file is decoded with the project's preprocessing first;
what cannot be decoded is skipped and reported with its reason. Byte-identical
files are grouped so a duplicate never lands in two splits. The split is
stratified per class, seeded and independent of file-system order.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from catdog.contract import CLASS_NAMES
from catdog.preprocessing import ImageError, load_image

SPLITS = ("train", "validation", "test")
MANIFEST_FILE = "manifest.json"
_FLAT_NAME = re.compile(r"^(?P<label>[a-z]+)\.[^/]+$", re.IGNORECASE)


@dataclass(frozen=True)
class Candidate:
    """One raw file with the class its location gives it."""

    path: Path
    label: str


@dataclass(frozen=True)
class Checked:
    """A raw file after decoding: its content hash, or why it was rejected."""

    candidate: Candidate
    sha256: str
    reason: str | None


def find_candidates(source: Path, class_names: tuple[str, ...] = CLASS_NAMES) -> list[Candidate]:
    """List the labelled files of a raw folder in either Kaggle layout.

    Class folders (``cat/`` or ``Cat/``, files at any depth inside) win over flat
    ``cat.N.jpg`` names. Hidden files and folders (``.thumbnails``, macOS ``._x.jpg``)
    and those of photo tools (Synology ``@eaDir``, ``__MACOSX``) are not photos.
    """
    if not source.is_dir():
        raise ValueError(f"{source}: not a folder")
    folders: dict[str, list[Path]] = defaultdict(list)
    for path in source.iterdir():
        if path.is_dir() and path.name.lower() in class_names:
            folders[path.name.lower()].append(path)
    twice = [sorted(p.name for p in found) for found in folders.values() if len(found) > 1]
    if twice:
        raise ValueError(f"{source}: one class in two folders {twice[0]}; keep one")
    if folders:
        missing = [name for name in class_names if name not in folders]
        if missing:
            raise ValueError(f"{source}: missing class folder(s) {missing}")
        return [
            Candidate(path, name)
            for name in class_names
            for path in sorted(folders[name][0].rglob("*"))
            if path.is_file() and not _tool_file(path.relative_to(folders[name][0]))
        ]
    found = []
    for path in sorted(source.iterdir()):
        match = _FLAT_NAME.match(path.name)
        if path.is_file() and match and match["label"].lower() in class_names:
            found.append(Candidate(path, match["label"].lower()))
    if not found:
        hint = [p.name for p in source.iterdir() if p.is_dir()][:5]
        raise ValueError(
            f"{source}: found neither {'.N.jpg / '.join(class_names)}.N.jpg files nor "
            f"class folders {'/'.join(n.capitalize() for n in class_names)}; "
            f"give the folder holding them (subfolders here: {hint})"
        )
    return found


def _tool_file(relative: Path) -> bool:
    """Hidden, or kept by a photo tool rather than a photo (see ``find_candidates``)."""
    return any(part[:1] in {".", "@"} or part == "__MACOSX" for part in relative.parts)


def check_file(candidate: Candidate) -> Checked:
    """Hash a file and decode it fully; a failure becomes the skip reason."""
    data = candidate.path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return Checked(candidate, digest, "empty file")
    try:
        load_image(data)
    except ImageError as exc:
        return Checked(candidate, digest, exc.reason)
    return Checked(candidate, digest, None)


def assign_splits(
    groups: dict[str, list[Candidate]],
    ratios: tuple[float, float, float],
    seed: int,
    class_names: tuple[str, ...] = CLASS_NAMES,
) -> dict[str, str]:
    """Map each content hash to a split, stratified by class, seeded and order-free."""
    by_class: dict[str, list[str]] = defaultdict(list)
    for digest, members in groups.items():
        by_class[members[0].label].append(digest)
    assignment: dict[str, str] = {}
    for name in class_names:
        digests = sorted(by_class[name])
        random.Random(f"{seed}:{name}").shuffle(digests)
        total = sum(len(groups[d]) for d in digests)
        bounds = [ratios[0] * total, (ratios[0] + ratios[1]) * total]
        placed = 0
        for digest in digests:
            assignment[digest] = SPLITS[sum(placed >= b for b in bounds)]
            placed += len(groups[digest])
    return assignment


def split_fingerprint(rows: list[tuple[str, str, str]]) -> str:
    """A hash of (split, class, content hash) rows: equal iff the split is the same."""
    lines = "\n".join("\t".join(row) for row in sorted(rows))
    return hashlib.sha256(lines.encode()).hexdigest()


def prepare(
    source: str | Path,
    dest: str | Path,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 42,
    force: bool = False,
    workers: int | None = None,
) -> dict:
    """Check, split and copy a raw folder; write and return the manifest."""
    source, dest = Path(source), Path(dest)
    if abs(sum(ratios) - 1.0) > 1e-6 or min(ratios) < 0:
        raise ValueError(f"split ratios must be >= 0 and sum to 1, got {ratios}")
    if dest.exists() and any(dest.iterdir()):
        if not force:
            raise ValueError(f"{dest} is not empty; pass --force to replace it")
        shutil.rmtree(dest)
    candidates = find_candidates(source)
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        checked = list(pool.map(check_file, candidates))

    skipped = [
        {
            "file": str(c.candidate.path.relative_to(source)),
            "class": c.candidate.label,
            "reason": c.reason,
        }
        for c in checked
        if c.reason
    ]
    groups: dict[str, list[Candidate]] = defaultdict(list)
    for c in checked:
        if not c.reason:
            groups[c.sha256].append(c.candidate)
    for digest in [d for d, m in groups.items() if len({c.label for c in m}) > 1]:
        for c in groups.pop(digest):
            skipped.append(
                {
                    "file": str(c.path.relative_to(source)),
                    "class": c.label,
                    "reason": "same bytes labelled as more than one class",
                }
            )

    assignment = assign_splits(groups, ratios, seed)
    counts = {s: {n: 0 for n in CLASS_NAMES} for s in SPLITS}
    rows, files = [], []
    for digest, members in sorted(groups.items()):
        split = assignment[digest]
        for c in members:
            target = dest / split / c.label / c.path.name
            if target.exists():  # same name in two sub-folders of a class folder
                target = target.with_name(f"{digest[:8]}-{c.path.name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(c.path, target)
            counts[split][c.label] += 1
            rows.append((split, c.label, digest))
            files.append(
                {
                    "split": split,
                    "class": c.label,
                    "file": str(target.relative_to(dest)),
                    "source": str(c.path.relative_to(source)),
                    "sha256": digest,
                }
            )
    for split in SPLITS:
        for name in CLASS_NAMES:
            (dest / split / name).mkdir(parents=True, exist_ok=True)

    manifest = {
        "source": str(source.resolve()),
        "seed": seed,
        "ratios": dict(zip(SPLITS, ratios)),
        "class_names": list(CLASS_NAMES),
        "counts": counts,
        "total": len(rows),
        "skipped": sorted(skipped, key=lambda s: s["file"]),
        "duplicate_groups": sorted(
            sorted(str(c.path.relative_to(source)) for c in members)
            for members in groups.values()
            if len(members) > 1
        ),
        "fingerprint": split_fingerprint(rows),
        "files": sorted(files, key=lambda f: f["file"]),
    }
    (dest / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_fingerprint(split_dir: str | Path) -> str | None:
    """The fingerprint recorded by ``prepare`` for a split folder, if there is one."""
    path = Path(split_dir) / MANIFEST_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("fingerprint")


def format_summary(manifest: dict) -> str:
    """A short human report: counts per split and class, then every skipped file."""
    names = manifest["class_names"]
    lines = [f"{'split':<12}" + "".join(f"{n:>8}" for n in names) + f"{'total':>8}"]
    for split, per_class in manifest["counts"].items():
        row = [per_class[n] for n in names]
        lines.append(f"{split:<12}" + "".join(f"{v:>8}" for v in row) + f"{sum(row):>8}")
    lines.append(
        f"kept {manifest['total']} files; skipped {len(manifest['skipped'])}; "
        f"{len(manifest['duplicate_groups'])} duplicate groups kept within one split"
    )
    lines += [f"  skipped {s['file']}: {s['reason']}" for s in manifest["skipped"]]
    lines.append(f"seed {manifest['seed']}, fingerprint {manifest['fingerprint'][:16]}")
    return "\n".join(lines)
