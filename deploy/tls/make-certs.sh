#!/usr/bin/env bash
# The TLS recipe for tfe-oidc's discovery listener: a private CA and a server certificate whose
# subjectAltName carries every name and address in the issuer URL, made with openssl alone.
#
#   OUT=/etc/tfe-oidc/tls SAN="DNS:tfe-oidc.internal,IP:10.0.7.10" ./deploy/tls/make-certs.sh
#
# Writes into $OUT:
#   ca.pem          the CA certificate: Vault's oidc_discovery_ca_pem, validate's --ca-file
#   ca-key.pem      the CA's private key (0600): move it offline once the certificates exist
#   server.pem      the server certificate (discovery.tls_cert)
#   server-key.pem  its private key (0600; discovery.tls_key)
#
# Run it again to renew the server certificate: an existing CA in $OUT is reused, so Vault's
# oidc_discovery_ca_pem stays valid; then `systemctl reload tfe-oidc`. The tests run this script.
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

[[ $SAN =~ ^(DNS|IP):[^,[:space:]]+(,(DNS|IP):[^,[:space:]]+)*$ ]] ||
  { echo "make-certs.sh: SAN must be DNS:name or IP:address entries separated by commas: $SAN" >&2; exit 64; }
first=${SAN%%,*}
CN=${CN:-${first#*:}}

umask 077
mkdir -p "$OUT"
cd "$OUT"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)

if [ ! -s ca.pem ] || [ ! -s ca-key.pem ]; then
  "$OPENSSL" req -x509 "${ec[@]}" -keyout ca-key.pem -out ca.pem -days "$CA_DAYS" \
    -subj "/CN=$CA_NAME" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "made a new CA: $OUT/ca.pem"
fi

"$OPENSSL" req -new "${ec[@]}" -keyout server-key.pem -out server.csr -subj "/CN=$CN" 2>/dev/null
cat > server.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$SAN
EXT
"$OPENSSL" x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem \
  -set_serial "0x$("$OPENSSL" rand -hex 16)" -days "$DAYS" -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext
chmod 0644 ca.pem server.pem
"$OPENSSL" verify -CAfile ca.pem server.pem >/dev/null
echo "made $OUT/server.pem for $SAN, valid $DAYS days"
