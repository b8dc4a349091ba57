#!/bin/sh
# Builds the project's virtualenv with what `make run` and `make test` need.
# Debian's python3 may lack ensurepip (package python3-venv); then the venv is
# made without pip and the system's pip installs into it.
set -eu
python="$1"
venv="$2"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "reach needs Python 3.11 or newer as '$python'." >&2
    exit 1
fi
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
    echo "reach needs Python 3.11 or newer; '$python' is $("$python" -V 2>&1)." >&2
    exit 1
}

if [ ! -x "$venv/bin/python" ]; then
    echo "Creating the virtualenv in $venv ..."
    if ! "$python" -m venv "$venv" 2>/dev/null; then
        rm -rf "$venv"
        "$python" -m venv --without-pip "$venv"
    fi
fi

if "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    pip="$venv/bin/python -m pip"
elif "$python" -m pip --version >/dev/null 2>&1; then
    pip="$python -m pip --python $venv/bin/python"
else
    echo "No pip found: install Debian's python3-venv (or python3-pip) and run make again." >&2
    exit 1
fi

echo "Installing reach and its development tools ..."
$pip install --quiet --disable-pip-version-check --upgrade pip
$pip install --quiet --disable-pip-version-check -e '.[dev]'
