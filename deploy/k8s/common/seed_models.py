"""Init container: give an empty model volume the versions baked into the image.

Usage: ``python seed_models.py SOURCE TARGET`` where SOURCE is the image's model
base folder (the Dockerfile's ``CATDOG_MODEL_DIR``) and TARGET the same folder on
the shared volume. If TARGET already holds an integer version folder, nothing is
touched: the volume, not the image, decides what is served from then on.

Each version is copied under a dot-name the service ignores, then renamed into
place in one step, so the service's watcher never sees half a version. When
several pods start on a fresh volume at once, the first rename wins and the
others throw their copy away. Standard library only: it runs in the serving image.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def versions(folder: Path) -> list[str]:
    """Names of the integer version folders in ``folder``, lowest first."""
    if not folder.is_dir():
        return []
    return sorted((p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=int)


def seed(source: Path, target: Path) -> list[str]:
    """Copy every version of ``source`` into ``target`` if it has none; the names copied."""
    if versions(target):
        return []
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in versions(source):
        staging = target / f".seed-{name}-{os.getpid()}"
        shutil.copytree(source / name, staging)
        try:
            staging.rename(target / name)
        except OSError:  # another pod put this version in place first
            shutil.rmtree(staging, ignore_errors=True)
        else:
            copied.append(name)
    return copied


def unwritable(target: Path, exc: PermissionError) -> str:
    """What to do when this user may not write the volume (its root owned by root)."""
    return (
        f"cannot seed {target}: {exc.strerror} ({exc.filename}), running as uid "
        f"{os.getuid()}. Many ReadWriteMany volumes (NFS, Filestore, Azure Files) "
        "ignore the pod's fsGroup, so their root stays root's. Give the volume to this "
        "uid on the storage side (docs/deployment.md, 'Models outside the image'): an "
        "EFS access point or NFS export owned by it, mount options uid=/gid= on Azure "
        "Files, or chown its root once from a pod that may run as root."
    )


def main(argv: list[str]) -> int:
    """Seed, log what happened, exit 1 if the target still has no version at all."""
    if len(argv) != 2:
        print("usage: seed_models.py SOURCE TARGET", file=sys.stderr)
        return 2
    source, target = Path(argv[0]), Path(argv[1])
    try:
        copied = seed(source, target)
    except PermissionError as exc:
        print(unwritable(target, exc), file=sys.stderr)
        return 1
    present = versions(target)
    if copied:
        print(f"seeded {target} with version(s) {', '.join(copied)} from {source}")
    else:
        print(f"{target} already holds version(s) {', '.join(present) or 'none'}; left as is")
    if not present:
        print(f"no model version in {target} (and none in {source})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
