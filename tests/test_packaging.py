"""The built distributions (issue 14): the wheel carries LICENSE, py.typed and the metadata (an SPDX
License-Expression, no upper caps on torch/torchvision, one version); the sdist carries what its
tests need. Built from a copy of the sources, so the checkout gets no build/ or egg-info."""

import email
import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "BENCHMARKS.md", "src", "docs"]

pytestmark = [
    pytest.mark.skipif(
        not (ROOT / "pyproject.toml").is_file() or not (ROOT / "src").is_dir(),
        reason="needs the source tree (run from a checkout or an unpacked sdist)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("setuptools") is None, reason="needs setuptools to build"
    ),
]


def _copy_sources(dst: Path, with_tests: bool = False) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "*.pyc")
    dst.mkdir(parents=True)
    for name in [*SOURCES, *(["tests"] if with_tests else [])]:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, dst / name)
    return dst


def _build(kind: str, tmp_path: Path, with_tests: bool = False) -> Path:
    source = _copy_sources(tmp_path / "src-copy", with_tests)
    out = tmp_path / "dist"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    if kind == "sdist" or importlib.util.find_spec("build") is not None:
        command = [sys.executable, "-m", "build", f"--{kind}", "--no-isolation"]
        command += ["--outdir", str(out), str(source)]
    else:
        command += ["-w", str(out), str(source)]
    if kind == "sdist" and importlib.util.find_spec("build") is None:
        pytest.skip("building the sdist needs the 'build' package")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    suffix = ".whl" if kind == "wheel" else ".tar.gz"
    (built,) = [p for p in out.iterdir() if p.name.endswith(suffix)]
    return built


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return _build("wheel", tmp_path_factory.mktemp("wheel"))


def _version() -> str:
    text = (ROOT / "src" / "nextpose" / "_version.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def test_wheel_carries_license_types_and_metadata(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(info))
        license_text = archive.read(next(n for n in names if n.endswith("licenses/LICENSE")))
    assert b"Apache License" in license_text and b"Version 2.0, January 2004" in license_text
    assert license_text == (ROOT / "LICENSE").read_bytes()
    assert "nextpose/py.typed" in names
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["License"] is None  # the deprecated free-text field is gone
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["Version"] == _version()
    assert wheel.name.startswith(f"nextpose-{_version()}-")
    requires = metadata.get_all("Requires-Dist")
    for name in ("torch", "torchvision"):
        (spec,) = [r for r in requires if re.match(rf"{name}\b(?![-_])", r)]
        assert "<" not in spec, f"upper cap on {name}: {spec}"
        assert ">=" in spec, f"no lower bound on {name}: {spec}"
    assert any(r.startswith("safetensors") for r in requires)
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    assert metadata.get_all("Project-URL")
    assert metadata["Requires-Python"] == ">=3.11"


def test_version_is_written_once():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^version\s*=\s*"', pyproject, re.M) is None  # dynamic
    init = (ROOT / "src" / "nextpose" / "__init__.py").read_text()
    assert re.search(r"^__version__\s*=", init, re.M) is None


def test_sdist_carries_what_its_tests_need(tmp_path):
    if not (ROOT / "tests" / "conftest.py").is_file():
        pytest.skip("needs the tests folder")
    sdist = _build("sdist", tmp_path, with_tests=True)
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    for needed in (
        "LICENSE",
        "src/nextpose/py.typed",
        "src/nextpose/_version.py",
        "tests/conftest.py",
        "tests/robust_files.py",
        "tests/data/coco-mini/test_coco.json",
        "tests/data/oracle/make_weights.py",
        "tests/data/oracle/manifest_resnext50.json",
    ):
        assert needed in names, needed
    shipped = {n for n in names if n.startswith("tests/")}
    local = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")
    }
    assert local <= shipped, sorted(local - shipped)[:10]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
