#!/usr/bin/env bash
# Writes requirements-dev.lock: one version of every package the dev extra pulls in, for
# CPython 3.11 on x86-64 Linux. The README's install commands pass it to pip as constraints
# (-c), so a fresh install gets exactly what the tests last passed with. Pins already in the
# file are kept unless pyproject.toml no longer allows them; `scripts/lock.sh --upgrade`
# moves everything to the newest allowed. Needs uv (pip install uv).
# torch is left out: the test command installs its pinned CPU build first.
set -euo pipefail
cd "$(dirname "$0")/.."
exec uv pip compile pyproject.toml --extra dev --quiet \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --constraint <(printf 'torch==2.13.0\n') --no-emit-package torch \
    --custom-compile-command scripts/lock.sh \
    --output-file requirements-dev.lock "$@"
