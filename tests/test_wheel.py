"""A wheel built from the repository, installed in a fresh virtualenv, imports every module."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

IMPORT_ALL = """
import importlib, pkgutil, sys
import turnout.kernel
names = []
for package in ("kernel", "plugins", "adapters", "bots"):
    module = importlib.import_module("turnout." + package)
    assert "site-packages" in module.__file__, module.__file__
    names.append(module.__name__)
    for info in pkgutil.walk_packages(module.__path__, module.__name__ + "."):
        importlib.import_module(info.name)
        names.append(info.name)
print("\\n".join(names))
"""


def test_wheel_installs_and_imports_every_module(tmp_path: Path) -> None:
    # Build from a copy, so the build leaves nothing behind in the working tree.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.db*"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(source)], check=True, cwd=tmp_path)
    (wheel,) = dist.glob("turnout-*.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # Dependencies come from this environment's site-packages, added as a plain path (so its
    # .pth files, the editable install among them, are not processed); turnout from the wheel.
    (Path(site) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                    "-q", str(wheel)], check=True)

    names = subprocess.run([python, "-c", IMPORT_ALL], check=True, capture_output=True,
                           text=True, cwd=tmp_path).stdout.split()
    for expected in ("turnout.kernel.kernel", "turnout.kernel.hookspecs",
                     "turnout.plugins.fallback", "turnout.adapters.providers.anthropic",
                     "turnout.adapters.http.app", "turnout.adapters.cli", "turnout.bots"):
        assert expected in names
    help_text = subprocess.run([env_dir / "bin" / "turnout", "--help"], check=True,
                               capture_output=True, text=True).stdout
    assert "serve" in help_text and "route --explain" in help_text
