#!/usr/bin/env bash
# Set up (install runtime + test requirements and this package) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt -r requirements-test.txt
python -m pip install -q --no-deps -e .
python -m pytest -q -p no:cacheprovider tests "$@"
