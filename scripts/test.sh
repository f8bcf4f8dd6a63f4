#!/usr/bin/env bash
# Install fedq with its test tools into .venv and run the linter and the tests.
# This is the README's test command and what CI runs (.ci/run), on a clean clone.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/pytest "$@"
