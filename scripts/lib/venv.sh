# Sourced by scripts/test and scripts/bench: the Python tools they need, in a virtual environment
# `.venv` at the top of the repository (git-ignored).
#
# Debian's Python (12 and later) refuses `pip install` outside a virtual environment (PEP 668,
# "externally-managed-environment"), so nothing is installed into the system Python. The venv is
# made by the first `python3` on PATH that can make one, else by Debian's /usr/bin/python3; when
# none can (Debian ships the `venv` module without `ensurepip`), the Debian package python3-venv
# is installed and the venv made again.
#
#   venv_install PKG==VERSION...   make .venv if needed and install the pins it does not have yet
#   venv_activate                  put .venv/bin first on PATH (python3, pip and bao come from it)
#
# Fast and idempotent: .venv/tfe-oidc-installed lists the pins installed so far; a run whose pins
# are all listed, with a working .venv/bin/python, installs nothing and takes no network access.

VENV_DIR=.venv
VENV_STAMP=$VENV_DIR/tfe-oidc-installed

# Runs apt-get as root (through sudo when not root).
apt_install() {
  local sudo=()
  if [ "$(id -u)" != 0 ]; then sudo=(sudo); fi
  echo "== installing from Debian: $*"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null
}

# Makes $VENV_DIR with the first interpreter that can; returns 1 when none can.
venv_make() {
  local py
  for py in python3 /usr/bin/python3; do
    command -v "$py" >/dev/null || continue
    # --clear: a previous attempt without ensurepip leaves a venv with no pip behind.
    if "$py" -m venv --clear "$VENV_DIR" >/dev/null 2>&1; then
      echo "== made $VENV_DIR with $("$VENV_DIR/bin/python" -c 'import sys; print(sys.executable, sys.version.split()[0])') (from $(command -v "$py"))"
      return 0
    fi
  done
  return 1
}

venv_install() {
  if ! "$VENV_DIR/bin/python" -c 'import pip' >/dev/null 2>&1; then
    # None yet, or made by an interpreter that has since gone (a removed pyenv version).
    rm -f "$VENV_STAMP"
    if ! venv_make; then
      apt_install python3-venv
      venv_make || { echo "cannot make a virtual environment in $VENV_DIR" >&2; return 1; }
    fi
  fi
  local pin missing=()
  for pin in "$@"; do
    grep -qxF -- "$pin" "$VENV_STAMP" 2>/dev/null || missing+=("$pin")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "== installing into $VENV_DIR from PyPI: ${missing[*]}"
    PIP_ROOT_USER_ACTION=ignore "$VENV_DIR/bin/python" -m pip install --quiet \
      --disable-pip-version-check "${missing[@]}"
    printf '%s\n' "${missing[@]}" >>"$VENV_STAMP"
  fi
}

venv_activate() {
  if [ -x "$VENV_DIR/bin/python" ]; then
    PATH="$PWD/$VENV_DIR/bin:$PATH"
    export PATH VIRTUAL_ENV="$PWD/$VENV_DIR"
  fi
}
