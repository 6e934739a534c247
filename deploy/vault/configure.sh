#!/usr/bin/env bash
# Wires Vault's (or OpenBao's) JWT auth method to a tfe-oidc issuer, the way Terraform
# Enterprise's documentation configures Vault for workload identity:
#
#   1. enable the jwt auth method (once; at $MOUNT, TFE's TFC_VAULT_AUTH_PATH),
#   2. point it at the issuer's discovery listener (oidc_discovery_url + the CA of its TLS
#      certificate) and pin bound_issuer, so that every token's iss is checked,
#   3. write the workspace's policy,
#   4. write the role TFE logs in with (TFC_VAULT_RUN_ROLE, or TFC_VAULT_PLAN_ROLE /
#      TFC_VAULT_APPLY_ROLE with PHASE=plan|apply), as a JSON body: bound_claims is a map and
#      cannot be given as key=value on the CLI.
#
# Safe to run again: it only rewrites what it owns. Rewriting auth/<mount>/config also makes
# Vault drop its cached JWKS (see README.md, "Revoking a key").
#
#   ISSUER=https://tfe-oidc.internal:8443 CA_FILE=/etc/tfe-oidc/tls/ca.pem \
#   ORG=acme WORKSPACE=prod ./configure.sh
#
# The CLI reads VAULT_ADDR / VAULT_TOKEN (vault) or BAO_ADDR / BAO_TOKEN (bao) as usual; the
# token needs sudo on sys/auth and write on sys/policy and auth/<mount>/*.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

VAULT_CLI=${VAULT_CLI:-vault}          # vault, or bao for OpenBao
ISSUER=${ISSUER:?set ISSUER to tfe-oidc issuer URL, e.g. https://tfe-oidc.internal:8443 (no trailing slash)}
CA_FILE=${CA_FILE:-}                   # PEM CA (or the leaf) of the discovery listener; empty: system roots
MOUNT=${MOUNT:-jwt}                    # TFC_VAULT_AUTH_PATH
ORG=${ORG:?set ORG to the TFE organization name}
PROJECT=${PROJECT:-*}                  # a project name, or * for any project
WORKSPACE=${WORKSPACE:?set WORKSPACE to the TFE workspace name}
PHASE=${PHASE:-*}                      # plan, apply, or * for both
if [ "$PHASE" = "*" ]; then default_role="tfe-$ORG-$WORKSPACE"; else default_role="tfe-$ORG-$WORKSPACE-$PHASE"; fi
ROLE=${ROLE:-$default_role}            # TFC_VAULT_RUN_ROLE (or TFC_VAULT_PLAN_ROLE / TFC_VAULT_APPLY_ROLE)
POLICY=${POLICY:-tfe-$ORG-$WORKSPACE}  # the policy the role's tokens get
POLICY_FILE=${POLICY_FILE:-$here/policy.hcl}
AUDIENCE=${AUDIENCE:-vault.workload.identity}   # TFC_VAULT_WORKLOAD_IDENTITY_AUDIENCE
TOKEN_TTL=${TOKEN_TTL:-20m}
ROLE_FILE=${ROLE_FILE:-}               # a complete role JSON body instead of the generated one

die() { echo "configure.sh: $*" >&2; exit 64; }

# The names go into a glob and into JSON: hold them to tfe-oidc's own input rules
# (docs/reference.md, section 6.3), so that neither a typo nor a ':' or '*' can widen the role.
[[ $ISSUER =~ ^https?://[^/?#]+$ ]] || die "ISSUER must be scheme://host[:port], no path and no trailing slash: $ISSUER"
[[ $ORG =~ ^[A-Za-z0-9_-]{1,90}$ ]] || die "ORG may hold letters, digits, - and _ only: $ORG"
[[ $WORKSPACE =~ ^[A-Za-z0-9_-]{1,90}$ ]] || die "WORKSPACE may hold letters, digits, - and _ only: $WORKSPACE"
[[ $PROJECT == "*" || $PROJECT =~ ^[A-Za-z0-9_-]+( [A-Za-z0-9_-]+)*$ ]] || die "PROJECT must be * or a project name: $PROJECT"
[[ $PHASE == "*" || $PHASE == plan || $PHASE == apply ]] || die "PHASE must be plan, apply or *: $PHASE"
[[ $MOUNT =~ ^[A-Za-z0-9_/-]+$ ]] || die "MOUNT is not a mount path: $MOUNT"
[[ $ROLE =~ ^[A-Za-z0-9_.-]+$ ]] || die "ROLE is not a role name: $ROLE"
[[ $POLICY =~ ^[A-Za-z0-9_.-]+$ ]] || die "POLICY is not a policy name: $POLICY"
[[ $AUDIENCE =~ ^[^[:space:]\"\\]+$ ]] || die "AUDIENCE must not hold whitespace, quotes or backslashes: $AUDIENCE"
[ -z "$CA_FILE" ] || [ -r "$CA_FILE" ] || die "CA_FILE is not readable: $CA_FILE"
[ -r "$POLICY_FILE" ] || die "POLICY_FILE is not readable: $POLICY_FILE"
[ -z "$ROLE_FILE" ] || [ -r "$ROLE_FILE" ] || die "ROLE_FILE is not readable: $ROLE_FILE"

set -x

# 1. The auth method (skipped when the mount exists).
mounts=$("$VAULT_CLI" auth list -format=json)
if [[ $mounts != *"\"$MOUNT/\""* ]]; then
  "$VAULT_CLI" auth enable -path="$MOUNT" jwt
fi

# 2. Discovery. Vault fetches $ISSUER/.well-known/openid-configuration now (the write fails if it
#    cannot, or if the document's issuer is not byte-equal to $ISSUER) and the JWKS at the first
#    login; bound_issuer makes it check every token's iss.
#    tfe-oidc signs RS256 only; without jwt_supported_algs Vault accepts every asymmetric alg.
config=(oidc_discovery_url="$ISSUER" bound_issuer="$ISSUER" jwt_supported_algs=RS256)
if [ -n "$CA_FILE" ]; then config+=(oidc_discovery_ca_pem=@"$CA_FILE"); fi
"$VAULT_CLI" write "auth/$MOUNT/config" "${config[@]}"

# 3. The policy.
"$VAULT_CLI" policy write "$POLICY" "$POLICY_FILE"

# 4. The role, as TFE's documentation writes it.
if [ -z "$ROLE_FILE" ]; then
  ROLE_FILE=$(mktemp)
  trap 'rm -f "$ROLE_FILE"' EXIT
  cat >"$ROLE_FILE" <<JSON
{
  "role_type": "jwt",
  "bound_audiences": ["$AUDIENCE"],
  "bound_claims_type": "glob",
  "bound_claims": {
    "sub": "organization:$ORG:project:$PROJECT:workspace:$WORKSPACE:run_phase:$PHASE"
  },
  "user_claim": "terraform_full_workspace",
  "token_policies": ["$POLICY"],
  "token_ttl": "$TOKEN_TTL"
}
JSON
fi
"$VAULT_CLI" write "auth/$MOUNT/role/$ROLE" @"$ROLE_FILE"

set +x
case "$PHASE" in
  plan) role_var=TFC_VAULT_PLAN_ROLE ;;
  apply) role_var=TFC_VAULT_APPLY_ROLE ;;
  *) role_var=TFC_VAULT_RUN_ROLE ;;
esac
echo "Done. Workspace variables for $ORG/$WORKSPACE:"
echo "  TFC_VAULT_PROVIDER_AUTH=true"
echo "  TFC_VAULT_ADDR=<this Vault's address as the run reaches it>"
echo "  $role_var=$ROLE"
if [ "$MOUNT" != jwt ]; then echo "  TFC_VAULT_AUTH_PATH=$MOUNT"; fi
if [ "$AUDIENCE" != vault.workload.identity ]; then echo "  TFC_VAULT_WORKLOAD_IDENTITY_AUDIENCE=$AUDIENCE"; fi
