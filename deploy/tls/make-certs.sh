#!/usr/bin/env bash
# The TLS recipe for tfe-oidc's listeners: a private CA and a server certificate whose
# subjectAltName carries every name and address its clients connect to, made with openssl alone.
#
#   OUT=/etc/tfe-oidc/tls SAN="DNS:tfe-oidc.internal,IP:10.0.7.10" ./deploy/tls/make-certs.sh
#   OUT=/etc/tfe-oidc/tls SAN="DNS:tfe-oidc.internal,IP:10.0.7.10" NAME=api ./deploy/tls/make-certs.sh
#
# Writes into $OUT:
#   ca.pem          the CA certificate: Vault's oidc_discovery_ca_pem, validate's --ca-file,
#                   `tfe-oidc run --api-ca-file` and Prometheus' ca_file
#   ca-key.pem      the CA's private key (0600): keep it offline between renewals
#   $NAME.pem       the server certificate (NAME defaults to `server`: discovery.tls_cert;
#                   NAME=api for the API listener that remote runners reach: api.tls_cert)
#   $NAME-key.pem   its private key (0600; discovery.tls_key or api.tls_key)
#
# Run it again to renew a certificate: an existing CA in $OUT is reused, so Vault's
# oidc_discovery_ca_pem stays valid (put ca-key.pem back first: without it the script stops
# rather than make a new CA); then `systemctl reload tfe-oidc`. The tests run this script.
#
# Why each piece:
#   - the SAN is what Vault (Go) and `tfe-oidc validate` check; the CN is ignored. An issuer
#     with an IP address needs an IP: entry, a name needs a DNS: entry.
#   - P-256 keys: small, fast, accepted by Vault, OpenBao and rustls.
#   - serverAuth EKU and CA:FALSE on the leaf, pathlen:0 on the CA: nothing else can be signed
#     under it by mistake.
set -euo pipefail

OUT=${OUT:?set OUT to the output directory, e.g. /etc/tfe-oidc/tls}
SAN=${SAN:?set SAN to the names in the issuer URL, e.g. DNS:tfe-oidc.internal,IP:10.0.7.10}
DAYS=${DAYS:-397}            # server certificate lifetime
CA_DAYS=${CA_DAYS:-3650}     # CA lifetime (only when a new CA is made)
CA_NAME=${CA_NAME:-tfe-oidc private CA}
OPENSSL=${OPENSSL:-openssl}
NAME=${NAME:-server}
[[ $NAME =~ ^[a-z0-9][a-z0-9-]*$ ]] ||
  { echo "make-certs.sh: NAME must be lowercase letters, digits and dashes: $NAME" >&2; exit 64; }

[[ $SAN =~ ^(DNS|IP):[^,[:space:]]+(,(DNS|IP):[^,[:space:]]+)*$ ]] ||
  { echo "make-certs.sh: SAN must be DNS:name or IP:address entries separated by commas: $SAN" >&2; exit 64; }
first=${SAN%%,*}
CN=${CN:-${first#*:}}

umask 077
mkdir -p "$OUT"
cd "$OUT"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)

if [ -s ca.pem ] && [ ! -s ca-key.pem ]; then
  echo "make-certs.sh: $OUT/ca.pem exists but ca-key.pem does not: put the CA's key back to renew under it (a new CA would break Vault's oidc_discovery_ca_pem), or remove ca.pem to make a new CA" >&2
  exit 1
fi
if [ ! -s ca.pem ]; then
  "$OPENSSL" req -x509 "${ec[@]}" -keyout ca-key.pem -out ca.pem -days "$CA_DAYS" \
    -subj "/CN=$CA_NAME" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "made a new CA: $OUT/ca.pem"
fi

"$OPENSSL" req -new "${ec[@]}" -keyout "$NAME-key.pem" -out "$NAME.csr" -subj "/CN=$CN" 2>/dev/null
cat > "$NAME.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$SAN
EXT
"$OPENSSL" x509 -req -in "$NAME.csr" -CA ca.pem -CAkey ca-key.pem \
  -set_serial "0x$("$OPENSSL" rand -hex 16)" -days "$DAYS" -extfile "$NAME.ext" -out "$NAME.pem" 2>/dev/null
rm -f "$NAME.csr" "$NAME.ext"
chmod 0644 ca.pem "$NAME.pem"
"$OPENSSL" verify -CAfile ca.pem "$NAME.pem" >/dev/null
echo "made $OUT/$NAME.pem for $SAN, valid $DAYS days"
