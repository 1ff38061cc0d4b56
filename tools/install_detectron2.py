#!/usr/bin/env python
"""Install detectron2 into the running Python environment, unless one is already importable.

On a GPU cluster, install the real detectron2 (built from source with its C++/CUDA extension,
v0.6 as in the paper, or newer) before `pip install -e .`; this script then does nothing.

Where no build toolchain or source checkout is available (CI, laptops), the only registry source
is PyPI's ``pb1-detectron2==0.6``: detectron2 v0.6's Python files, byte-identical to the official
tag, but without ``detectron2/layers/csrc``, so its ``setup.py`` cannot compile ``detectron2._C``.
We download that sdist (hash-pinned in ``tools/detectron2-sdist.txt``) and build a pure-Python
wheel from its own ``setup.py`` with the extension left out (version ``0.6+nocsrc``, so
``pip list`` says what it is). No detectron2 source is modified or copied into this repository;
``dcl.compat`` supplies the small run-time shims such an install needs.

It also leaves out ``black==21.4b2``, which v0.6 lists as a requirement but only uses to
pretty-print configs when it is importable (its pins conflict with modern packages).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENT_FILE = HERE / "detectron2-sdist.txt"
LOCAL_VERSION = "0.6+nocsrc"

# Runs inside the unpacked sdist: its own setup.py, with setuptools.setup wrapped so the
# C++ extension and the formatter dependency are dropped, and the model-zoo configs kept.
_BUILD_SCRIPT = r"""
import sys, setuptools
_setup = setuptools.setup
def setup(**kwargs):
    kwargs["ext_modules"] = []
    kwargs.pop("cmdclass", None)
    kwargs["version"] = {version!r}
    kwargs["install_requires"] = [r for r in kwargs["install_requires"] if not r.startswith("black")]
    # setup.py globs a top-level configs/ that only a git checkout has; the sdist ships them
    # inside the package already.
    kwargs["package_data"] = {{"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}}
    return _setup(**kwargs)
setuptools.setup = setup
sys.argv = ["setup.py", "-q", "bdist_wheel", "--dist-dir", {dist!r}]
exec(compile(open("setup.py").read(), "setup.py", "exec"), {{"__name__": "__main__", "__file__": "setup.py"}})
"""


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Unpack ``tar`` into ``dest`` with tarfile's "data" filter; Pythons before 3.11.4 (Debian 12's
    system python3 is 3.11.2) have no filters, so there every member and link target is checked to
    stay inside ``dest`` first (the archive is hash-pinned; this is the second line of defence)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = dest.resolve()
    for member in tar.getmembers():
        targets = [root / member.name]
        if member.issym():
            targets.append((root / member.name).parent / member.linkname)
        elif member.islnk():
            targets.append(root / member.linkname)
        if member.isdev() or any(not Path(os.path.normpath(t)).is_relative_to(root) for t in targets):
            raise SystemExit(f"refusing {member.name!r} in {tar.name}: it would land outside {dest}")
    tar.extractall(dest)


def main() -> int:
    # --wheel-dir DIR: only build the wheel into DIR (tools/prepare_offline.py), install nothing.
    wheel_dir = Path(sys.argv[sys.argv.index("--wheel-dir") + 1]) if "--wheel-dir" in sys.argv else None
    if wheel_dir is None and importlib.util.find_spec("detectron2") is not None:
        import detectron2

        print(f"detectron2 {detectron2.__version__} already installed at {detectron2.__path__[0]}")
        return 0
    with tempfile.TemporaryDirectory(prefix="d2-build-") as tmp:
        tmp_path = Path(tmp)
        # --no-build-isolation: pip reads the sdist's metadata by running its setup.py, which
        # imports torch; the environment's torch is the one we want it to see.
        pip(
            "download",
            "--no-deps",
            "--no-build-isolation",
            "--require-hashes",
            "-r",
            str(REQUIREMENT_FILE),
            "-d",
            str(tmp_path / "sdist"),
        )
        (sdist,) = (tmp_path / "sdist").glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            extract(tar, tmp_path / "src")
        (source_dir,) = (tmp_path / "src").iterdir()
        dist = tmp_path / "dist"
        pip("install", "--quiet", "wheel")
        script = _BUILD_SCRIPT.format(version=LOCAL_VERSION, dist=str(dist))
        subprocess.run([sys.executable, "-c", script], cwd=source_dir, check=True)
        (wheel,) = dist.glob("*.whl")
        if wheel_dir is not None:
            wheel_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(wheel, wheel_dir / wheel.name)
        else:
            pip("install", str(wheel))
    return 0


if __name__ == "__main__":
    sys.exit(main())
