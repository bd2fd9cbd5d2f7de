"""Install the paddlemix_qwen25vl package.

The build copies the files the library reads at run time (``resources.BUNDLED_TREES``: model
configs, demo assets and weights, the operator sources) into ``paddlemix_qwen25vl/_bundled/``,
so a wheel or ``pip install .`` works without the source checkout.
"""
import importlib.util
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

here = Path(__file__).parent


def bundled_trees() -> tuple:
    """``paddlemix_qwen25vl.resources.BUNDLED_TREES``, read without importing the package (and paddle)."""
    spec = importlib.util.spec_from_file_location("resources", here / "paddlemix_qwen25vl" / "resources.py")
    resources = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(resources)
    return resources.BUNDLED_TREES

requirements = [
    line.split("#")[0].strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip()
    # paddle itself is left to the user: paddlepaddle (CPU, PyPI) or paddlepaddle-gpu (Paddle's index)
    and not line.startswith("paddlepaddle")
]


class BuildWithBundledFiles(build_py):
    """build_py, plus the shipped trees copied under ``paddlemix_qwen25vl/_bundled``."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "paddlemix_qwen25vl" / "_bundled"
        for tree in bundled_trees():
            shutil.rmtree(target / tree, ignore_errors=True)
            shutil.copytree(here / tree, target / tree, ignore=shutil.ignore_patterns("__pycache__", "*.so", "build"))


setup(
    name="paddlemix_qwen25vl",
    version="0.1.0",
    description="Qwen2.5-VL (3B/7B/72B) for PaddlePaddle: inference and fine-tuning, numerically equal to the reference",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["paddlemix_qwen25vl", "paddlemix_qwen25vl.*"]),
    package_data={"paddlemix_qwen25vl": ["py.typed", "serving/static/*"]},  # the chat page
    cmdclass={"build_py": BuildWithBundledFiles},
    python_requires=">=3.9",
    install_requires=requirements,
    license="Apache-2.0",
)
