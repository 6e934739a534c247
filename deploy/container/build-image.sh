#!/usr/bin/env bash
# Builds the OCI image of tfe-oidc with podman, from the release binary, with no registry:
#
#   cargo build --release
#   deploy/container/build-image.sh                 # -> localhost/tfe-oidc:<version>
#   podman save -o tfe-oidc.tar localhost/tfe-oidc:0.1.0   # then load it where it runs:
#   kind load image-archive tfe-oidc.tar  |  ctr -n k8s.io images import tfe-oidc.tar
#
# The binary links glibc dynamically (aws-lc, the resolver); the image carries exactly the
# libraries `ldd` lists, at the same paths, so it runs on the glibc it was built against and
# on nothing else. BIN and TAG override the binary and the tag.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${BIN:-target/release/tfe-oidc}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
TAG=${TAG:-localhost/tfe-oidc:$VERSION}
[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release first" >&2; exit 1; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
install -D -m 0755 "$BIN" "$root/usr/bin/tfe-oidc"
strip "$root/usr/bin/tfe-oidc"
# The loader and every library, by the paths the binary asks for.
for lib in $(ldd "$BIN" | grep -o '/[^ )]*'); do
  install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
# The CA roots `validate` and the credential exchange trust when no CA file is given.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
# A name for the user, for tools that show one; tfe-oidc itself needs none.
mkdir -p "$root/etc"
printf 'root:x:0:0::/:/nonexistent\ntfe-oidc:x:10001:10001::/var/lib/tfe-oidc:/nonexistent\n' >"$root/etc/passwd"
printf 'root:x:0:\ntfe-oidc:x:10001:\n' >"$root/etc/group"
mkdir -m 0700 "$ctx/state"

podman build --quiet --no-cache -f deploy/container/Containerfile -t "$TAG" "$ctx" >/dev/null
echo "$TAG"
