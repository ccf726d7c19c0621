"""The init container's seeding script, run on temporary folders, and how pods wire it.

The script (``deploy/k8s/common/seed_models.py``) must copy the image's versions
onto an empty model volume, never touch a volume that has a version, survive
several pods seeding at once, and stage under names the service's own version
listing ignores. The pods must run it from the image's model folder into the
folder the server then reads, on the same volume.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.deploy import app_facts, k8s
from tests.deploy.conftest import flavor, serving_container

SCRIPT = k8s.K8S / "common" / "seed_models.py"


def _script():
    spec = importlib.util.spec_from_file_location("seed_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model_base(root: Path, versions: dict[str, str]) -> Path:
    for version, content in versions.items():
        (root / version / "variables").mkdir(parents=True)
        (root / version / "saved_model.pb").write_text(content)
        (root / version / "variables" / "variables.index").write_text(content * 2)
    return root


def _tree(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): p.read_text() for p in files}


def test_seeds_an_empty_volume_with_every_version(tmp_path: Path) -> None:
    seed = _script()
    source = _model_base(tmp_path / "image", {"1": "one", "2": "two"})
    target = tmp_path / "volume" / "catdog"
    assert seed.main([str(source), str(target)]) == 0
    assert _tree(target) == _tree(source)
    assert sorted(p.name for p in target.iterdir()) == ["1", "2"], "staging folder left behind"


def test_leaves_a_volume_that_has_a_version_alone(tmp_path: Path) -> None:
    seed = _script()
    source = _model_base(tmp_path / "image", {"1": "baked", "2": "baked"})
    target = _model_base(tmp_path / "volume", {"7": "published"})
    before = _tree(target)
    assert seed.main([str(source), str(target)]) == 0
    assert _tree(target) == before


def test_another_pod_seeding_first_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other pod renames its copy into place while this one is still copying."""
    seed = _script()
    source = _model_base(tmp_path / "image", {"1": "mine"})
    target = tmp_path / "volume"
    copytree = seed.shutil.copytree

    def copy_while_another_pod_wins(src, dst, *args, **kwargs):
        if not (target / "1").exists():
            _model_base(target, {"1": "theirs"})
        return copytree(src, dst, *args, **kwargs)

    monkeypatch.setattr(seed.shutil, "copytree", copy_while_another_pod_wins)
    assert seed.seed(source, target) == []
    assert _tree(target) == _tree(_model_base(tmp_path / "expected", {"1": "theirs"}))


def test_fails_when_there_is_nothing_to_serve(tmp_path: Path) -> None:
    seed = _script()
    assert seed.main([str(tmp_path / "none"), str(tmp_path / "volume")]) == 1


def test_staging_names_are_not_versions_to_the_service(tmp_path: Path) -> None:
    from catdog.runtimes import version_dirs

    base = _model_base(tmp_path, {"3": "x"})
    (base / ".seed-4-123").mkdir()
    assert sorted(version_dirs(base)) == [3]
    assert _script().versions(base) == ["3"]


def test_rendered_config_map_carries_this_script(serving: str) -> None:
    [config] = [
        d for d in k8s.find(k8s.render(serving), "ConfigMap") if SCRIPT.name in d.get("data", {})
    ]
    assert config["data"][SCRIPT.name] == SCRIPT.read_text()


def test_pods_seed_the_folder_the_server_reads(serving: str) -> None:
    pod, main = serving_container(k8s.render(serving))
    by_field = {v: k for k, v in app_facts.setting_env_names().items()}
    model_env = by_field["model_dir"]
    [init] = [c for c in pod["initContainers"] if any(SCRIPT.name in a for a in c["command"])]
    source, target = init["command"][-2:]
    baked = app_facts.image_env(flavor(serving))[model_env]
    assert source == baked, "not the image's baked-in model folder"

    served = k8s.env_value(main, model_env)
    init_mount, main_mount = k8s.mount_for(init, target), k8s.mount_for(main, served)
    assert init_mount["name"] == main_mount["name"], "seeded and served volumes differ"
    assert not init_mount.get("readOnly") and main_mount.get("readOnly") is True
    inside = Path(target).relative_to(init_mount["mountPath"])
    assert inside == Path(served).relative_to(main_mount["mountPath"])
    # The source is the image's own folder: the volume must not hide it in the init container.
    assert k8s.mount_for(init, source) is None
