#!/usr/bin/env python3
"""Verify run identity tokens with JOSE libraries that share no code with tfe-oidc.

Usage: verify.py --jwks-url URL --issuer ISS --audience AUD [--ca PEM] < tokens (one per line)

Fetches the JWKS over HTTP(S) with PyJWT's PyJWKClient, verifies every token's RS256 signature,
iss, aud, exp, nbf and iat with PyJWT, and again with joserfc against the same key set. Prints one
JSON object per token: {"ok": true, "header": {...}, "claims": {...}} or {"ok": false, "error": "..."}.
Exits 0 when every token verified, 1 otherwise.
"""
import argparse
import json
import ssl
import sys

import jwt
from joserfc import jwt as jjwt
from joserfc.jwk import KeySet


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--jwks-url", required=True)
    p.add_argument("--issuer", required=True)
    p.add_argument("--audience", required=True)
    p.add_argument("--ca")
    a = p.parse_args()
    ctx = ssl.create_default_context(cafile=a.ca) if a.ca else None
    client = jwt.PyJWKClient(a.jwks_url, cache_keys=False, ssl_context=ctx)
    jwks = client.fetch_data()
    keyset = KeySet.import_key_set(jwks)
    all_ok = True
    for line in sys.stdin:
        token = line.strip()
        if not token:
            continue
        try:
            key = client.get_signing_key_from_jwt(token)
            claims = jwt.decode(token, key.key, algorithms=["RS256"], audience=a.audience, issuer=a.issuer,
                                options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]})
            header = jwt.get_unverified_header(token)
            # Second opinion: joserfc, against the same fetched key set.
            decoded = jjwt.decode(token, keyset, algorithms=["RS256"])
            jjwt.JWTClaimsRegistry(iss={"essential": True, "value": a.issuer},
                                   aud={"essential": True, "value": a.audience}).validate(decoded.claims)
            if decoded.claims != claims:
                raise ValueError("PyJWT and joserfc disagree on the claims")
            print(json.dumps({"ok": True, "header": header, "claims": claims}))
        except Exception as e:  # noqa: BLE001 - report every failure as data
            all_ok = False
            print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
