"""RS256 signing rate of PyJWT (with `cryptography`), for scripts/bench: the same claim set as
tfe-oidc's tokens, a fresh jti per token, a parsed key object (no per-token PEM parsing).

    python3 pyjwt_sign.py [seconds]   -> one JSON line: tokens per wall second and per CPU-second
"""
import json
import sys
import time
import uuid

import cryptography
import jwt
from cryptography.hazmat.backends.openssl.backend import backend
from cryptography.hazmat.primitives.asymmetric import rsa

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
claims = {
    "iss": "https://tfe.example.com", "aud": "vault.workload.identity",
    "sub": "organization:acme:project:Default Project:workspace:prod:run_phase:apply",
    "terraform_organization_id": "org-GRNbCjYNpBB6NEH9", "terraform_organization_name": "acme",
    "terraform_project_id": "prj-vegSA59s1XPwMr2t", "terraform_project_name": "Default Project",
    "terraform_workspace_id": "ws-mbsd5E3Ktt5Rg2Xm", "terraform_workspace_name": "prod",
    "terraform_full_workspace": "organization:acme:project:Default Project:workspace:prod",
    "terraform_run_id": "run-X3n1AUXNGWbfECsJ", "terraform_run_phase": "apply",
}
headers = {"kid": "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"}


def one():
    iat = int(time.time())
    body = {"jti": str(uuid.uuid4()), **claims, "iat": iat, "nbf": iat - 5, "exp": iat + 7200}
    return jwt.encode(body, key, algorithm="RS256", headers=headers)


def run(limit):
    c0, t0, n = time.process_time(), time.perf_counter(), 0
    while time.perf_counter() - t0 < limit:
        one()
        n += 1
    return n, time.perf_counter() - t0, time.process_time() - c0


run(0.3)
n, wall, cpu = run(seconds)
print(json.dumps({
    "impl": f"PyJWT {jwt.__version__} (cryptography {cryptography.__version__})",
    "python": sys.version.split()[0], "openssl": backend.openssl_version_text(),
    "tokens": n, "seconds": wall, "per_s": n / wall, "per_cpu_s": n / cpu,
}))
