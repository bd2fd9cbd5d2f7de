"""A user's install: the wheel, installed into a fresh location, runs the main job from an empty
directory (presets, demo checkpoint and images, operator sources all come from the package)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.paths import REPO


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """The package built as a wheel and installed (without dependencies) into a fresh folder."""
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    wheel = next(wheels.glob("paddlemix_qwen25vl-*.whl"))
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    return target


def run_installed(site: Path, cwd: Path, *args: str, **env: str) -> str:
    environment = {**os.environ, "PYTHONPATH": str(site), **env}
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_installed_package_is_self_contained(installed_wheel, tmp_path):
    probe = (
        "import paddlemix_qwen25vl as p\n"
        "from paddlemix_qwen25vl import config_preset, demo\n"
        "from paddlemix_qwen25vl.ops import loader\n"
        "print(p.__file__)\n"
        "assert config_preset('7B').hidden_size == 3584\n"
        "assert all(map(__import__('os').path.exists, (demo.DEMO_IMAGE, demo.DEMO_VIDEO, demo.SHIPPED_WEIGHTS)))\n"
        "assert all(map(__import__('os').path.exists, loader._load_build_config().sources()))\n"
        "assert (loader.EXTERNAL_OPS_DIR / 'csrc' / 'weight_only_kernels.h').is_file()\n"  # included, not listed
        "from paddlemix_qwen25vl.serving import app\n"
        "assert (app.STATIC_DIR / 'index.html').is_file() and (app.STATIC_DIR / 'chat.js').is_file()\n"
    )
    out = run_installed(installed_wheel, tmp_path, "-c", probe)
    assert out.strip().startswith(str(installed_wheel)), f"imported {out.strip()}, not the installed wheel"


def test_main_job_runs_from_the_wheel_in_an_empty_directory(installed_wheel, tmp_path, portable_cpu):
    """``python -m paddlemix_qwen25vl`` = the README's main command, also under the portable path."""
    out = run_installed(installed_wheel, tmp_path, "-m", "paddlemix_qwen25vl", "--max_new_tokens", "6",
                        PADDLEMIX_DEMO_DIR=str(tmp_path / "demo_cache"))
    assert out.split("output_text:")[1].strip() == "circle"
    assert not any(tmp_path.glob("*.py")) and list(tmp_path.iterdir()) == [tmp_path / "demo_cache"]
