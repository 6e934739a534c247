# Sourced by scripts/test-systemd and scripts/test-image: the release build they share, and the
# check and skip rules of the suite.
#
#   need_tool TOOL...   every TOOL on PATH, or: fail (CI=true, or no TFE_OIDC_ALLOW_SKIP=1), or
#                       return 1 so the caller skips (a developer with TFE_OIDC_ALLOW_SKIP=1)
#   release_binary      `cargo build --release` (a no-op once built) and the binary's path
#   build_deb VERSION   the .deb of that Debian version from that binary (cargo deb --no-build),
#                       in a directory of its own (cargo-deb removes the package's other .debs
#                       from its output directory), and its path
#   check NAME CMD...   runs CMD; counts and prints `ok - NAME` or `FAIL - NAME` with its output
#   summary             `N passed, N failed`; the exit status is 1 when a check failed

PASSED=0
FAILED=0

need_tool() {
  local tool missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "${CI:-}" != "true" ] && [ "${TFE_OIDC_ALLOW_SKIP:-}" = "1" ]; then
    echo "SKIPPED: ${missing[*]} not installed (TFE_OIDC_ALLOW_SKIP=1)" >&2
    return 1
  fi
  echo "${missing[*]} not installed: run scripts/test, which installs them (or set TFE_OIDC_ALLOW_SKIP=1 on a developer machine)" >&2
  exit 1
}

release_binary() {
  cargo build --release --quiet --bin tfe-oidc >&2
  echo "$PWD/target/release/tfe-oidc"
}

build_deb() {
  local version=$1
  release_binary >/dev/null
  cargo deb --no-build --strip --quiet --deb-version "$version" --output "target/debian/$version/"
}

check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    PASSED=$((PASSED + 1))
    echo "ok - $name"
  else
    FAILED=$((FAILED + 1))
    echo "FAIL - $name"
    printf '%s\n' "$out" | sed 's/^/    /'
  fi
}

summary() {
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}
