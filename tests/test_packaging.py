"""environment.yml (conda users), pyproject.toml and constraints.txt (CI) agree."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # conda-forge's name for the same package


def pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {Requirement(r).name: Requirement(r) for r in reqs}


def environment_specs():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = {}, {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            pip.update((Requirement(r).name, Requirement(r)) for r in entry["pip"])
        else:
            name, _, version = re.match(r"([\w.-]+)(==?)?(.*)", entry).groups()
            conda[name] = version
    return conda, pip


def constraints():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[req.name] = str(req.specifier).removeprefix("==")
    return pins


def test_every_dependency_is_in_environment_yml_with_the_same_spec():
    conda, pip = environment_specs()
    for name, req in pyproject_requirements().items():
        conda_name = CONDA_NAMES.get(name, name)
        if conda_name in conda:
            # conda pins the exact version CI uses; it must satisfy the supported range.
            assert req.specifier.contains(conda[conda_name]), (name, conda[conda_name], str(req.specifier))
        else:
            assert name in pip, f"{name} is in pyproject.toml but not in environment.yml"
            assert pip[name].specifier == req.specifier, (name, str(pip[name].specifier), str(req.specifier))
    assert set(pip) <= set(pyproject_requirements()), "environment.yml has packages pyproject.toml lacks"


def test_torch_pins_agree_with_constraints():
    conda, _ = environment_specs()
    pins = constraints()
    assert conda["pytorch"] == pins["torch"] == "2.14.1"
    assert conda["torchvision"] == pins["torchvision"] == "0.29.1"


def test_constraints_satisfy_pyproject_ranges():
    reqs = pyproject_requirements()
    for name, version in constraints().items():
        assert name in reqs, f"constraints.txt pins {name}, which pyproject.toml does not require"
        assert reqs[name].specifier.contains(version), (name, version)


@pytest.mark.parametrize("filters", [True, False], ids=["tarfile-filters", "python-before-3.11.4"])
def test_the_detectron2_sdist_is_unpacked_only_inside_its_folder(tmp_path, monkeypatch, filters):
    """tools/install_detectron2.py on Debian 12's python3 (3.11.2: no tarfile filters) too."""
    import importlib.util
    import io
    import tarfile

    spec = importlib.util.spec_from_file_location("install_detectron2", ROOT / "tools" / "install_detectron2.py")
    installer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installer)
    if not filters:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)

    def archive(*members):
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w:gz") as tar:
            for name, link in members:
                info = tarfile.TarInfo(name)
                if link:
                    info.type, info.linkname = tarfile.SYMTYPE, link
                    tar.addfile(info)
                else:
                    info.size = 1
                    tar.addfile(info, io.BytesIO(b"x"))
        data.seek(0)
        return tarfile.open(fileobj=data)

    installer.extract(archive(("detectron2-0.6/setup.py", None), ("detectron2-0.6/l", "setup.py")), tmp_path / "ok")
    assert (tmp_path / "ok" / "detectron2-0.6" / "setup.py").read_bytes() == b"x"
    for bad in [("../evil", None), ("detectron2-0.6/l", "../../outside")]:
        with pytest.raises((SystemExit, getattr(tarfile, "FilterError", SystemExit))):
            installer.extract(archive(bad), tmp_path / "bad")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "outside").exists()
