#!/usr/bin/env python3
"""Verify identity tokens with JOSE libraries that share no code with tfe-oidc.

Usage: verify.py --jwks-url URL --issuer ISS --audience AUD [--ca PEM] < tokens (one per line)

Fetches the JWKS over HTTP(S) with PyJWT's PyJWKClient, verifies every token's RS256 signature,
iss, aud, exp, nbf and iat with PyJWT, and again with joserfc against the same key set. Then checks
the payload against TFE's shape of its kind (workspace run, module test or Stacks deployment),
written out here from TFE's documentation rather than taken from tfe-oidc: the claim names in
order, the sub built from the claims, the ID prefixes, nbf's offset and the module-test TTL bounds.
Prints one JSON object per token: {"ok": true, "kind": ..., "order": [...], "header": {...},
"claims": {...}} or {"ok": false, "error": "..."}. Exits 0 when every token verified, 1 otherwise.
"""
import argparse
import json
import re
import ssl
import sys

REGISTERED = ["jti", "iss", "aud", "iat", "nbf", "exp", "sub"]
ORDER = {
    "run": REGISTERED + ["terraform_organization_id", "terraform_organization_name",
                         "terraform_project_id", "terraform_project_name",
                         "terraform_workspace_id", "terraform_workspace_name",
                         "terraform_full_workspace", "terraform_run_id", "terraform_run_phase"],
    "module_test": REGISTERED + ["terraform_run_phase", "terraform_organization_id",
                                 "terraform_organization_name", "terraform_run_id"],
    "stack": REGISTERED + ["terraform_operation", "terraform_stack_deployment_name",
                           "terraform_stack_id", "terraform_stack_name", "terraform_project_id",
                           "terraform_project_name", "terraform_organization_id",
                           "terraform_organization_name", "terraform_plan_id"],
}
NAME = re.compile(r"^[A-Za-z0-9_-]{1,90}$")
PROJECT = re.compile(r"^[A-Za-z0-9_-]+( [A-Za-z0-9_-]+)*$")


def need(condition, what):
    if not condition:
        raise ValueError(f"not TFE's shape: {what}")


def prefixed(value, prefix):
    return re.fullmatch(re.escape(prefix) + r"[A-Za-z0-9]{1,64}", value) is not None


def tfe_shape(c):
    """The kind of claims c, after checking them against TFE's shape of that kind."""
    sub = c["sub"]
    kind = "module_test" if ":module:" in sub else "stack" if ":stack:" in sub else "run"
    need(list(c.keys()) == ORDER[kind], f"{kind} claims in order {ORDER[kind]}, got {list(c)}")
    org = c["terraform_organization_name"]
    need(NAME.match(org) and prefixed(c["terraform_organization_id"], "org-"), "organization")
    if kind == "module_test":
        module = sub.removeprefix(f"organization:{org}:module:").removesuffix(":operation:test_run")
        need(NAME.match(module), "module name")
        need(sub == f"organization:{org}:module:{module}:operation:test_run", "module-test sub")
        need(c["terraform_run_phase"] == "plan", "module tests are plan")
        need(prefixed(c["terraform_run_id"], "trun-"), "trun- run id")
        need(c["nbf"] == c["iat"] - 30, "module-test nbf = iat - 30")
        need(300 <= c["exp"] - c["iat"] <= 1800, "module-test ttl in 300..1800 s")
        return kind
    project = c["terraform_project_name"]
    need(PROJECT.match(project) and prefixed(c["terraform_project_id"], "prj-"), "project")
    need(c["nbf"] == c["iat"] - 5, f"{kind} nbf = iat - 5")
    if kind == "stack":
        stack, deployment, op = (c["terraform_stack_name"], c["terraform_stack_deployment_name"],
                                 c["terraform_operation"])
        need(NAME.match(stack) and NAME.match(deployment) and op in ("plan", "apply"), "stack names")
        need(prefixed(c["terraform_stack_id"], "st-") and prefixed(c["terraform_plan_id"], "sp-"),
             "stack and plan ids")
        need(sub == f"organization:{org}:project:{project}:stack:{stack}:deployment:{deployment}"
                    f":operation:{op}", "stack sub")
        need(len(sub) <= 127, "stack sub at most 127 characters")
        return kind
    full = f"organization:{org}:project:{project}:workspace:{c['terraform_workspace_name']}"
    need(NAME.match(c["terraform_workspace_name"]) and prefixed(c["terraform_workspace_id"], "ws-"),
         "workspace")
    need(c["terraform_full_workspace"] == full, "terraform_full_workspace")
    need(c["terraform_run_phase"] in ("plan", "apply") and prefixed(c["terraform_run_id"], "run-"),
         "run")
    need(sub == f"{full}:run_phase:{c['terraform_run_phase']}", "run sub")
    return kind

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
            kind = tfe_shape(claims)
            print(json.dumps({"ok": True, "kind": kind, "order": list(claims), "header": header,
                              "claims": claims}))
        except Exception as e:  # noqa: BLE001 - report every failure as data
            all_ok = False
            print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
