"""Install the paddlemix_qwen25vl package."""
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [
    line.split("#")[0].strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip()
    # paddle itself is left to the user: paddlepaddle (CPU, PyPI) or paddlepaddle-gpu (Paddle's index)
    and not line.startswith("paddlepaddle")
]

setup(
    name="paddlemix_qwen25vl",
    version="0.1.0",
    description="Qwen2.5-VL (3B/7B/72B) for PaddlePaddle: inference and fine-tuning, numerically equal to the reference",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["paddlemix_qwen25vl", "paddlemix_qwen25vl.*"]),
    package_data={"paddlemix_qwen25vl": ["py.typed"]},
    python_requires=">=3.9",
    install_requires=requirements,
    license="Apache-2.0",
)
