#!/usr/bin/env bash
# The secrets-engine side of Vault-backed dynamic credentials: the AWS, GCP and Azure engine
# roles that a workspace's TFC_VAULT_BACKED_* variables point at, and that tfe-oidc's credential
# exchange (POST /v1/credentials) reads with the workspace's Vault token. policy.hcl grants that
# token "read" on exactly these paths.
#
# OpenBao has no AWS, GCP or Azure engine, so this script is not run by the tests (they mount
# KV stand-ins at the same paths); every command is Vault's documented CLI form.
#
#   AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… AWS_ROLE_ARN=arn:aws:iam::123456789012:role/deploy \
#   GCP_CREDENTIALS=/path/vault-sa.json GCP_PROJECT=my-project GCP_SERVICE_ACCOUNT=deployer@my-project.iam.gserviceaccount.com \
#   AZURE_SUBSCRIPTION_ID=… AZURE_TENANT_ID=… AZURE_CLIENT_ID=… AZURE_CLIENT_SECRET=… AZURE_SCOPE=/subscriptions/…/resourceGroups/prod \
#   ENGINES="aws gcp azure" ./engines.sh
set -euo pipefail

VAULT_CLI=${VAULT_CLI:-vault}
ENGINES=${ENGINES:-aws gcp azure}

mounted() { "$VAULT_CLI" secrets list -format=json | grep -q "\"$1/\""; }
enable() { mounted "$1" || "$VAULT_CLI" secrets enable -path="$1" "$1"; }

aws() {
  : "${AWS_ACCESS_KEY_ID:?}" "${AWS_SECRET_ACCESS_KEY:?}" "${AWS_ROLE_ARN:?the IAM role to assume}"
  enable aws
  "$VAULT_CLI" write aws/config/root access_key="$AWS_ACCESS_KEY_ID" secret_key="$AWS_SECRET_ACCESS_KEY" \
    region="${AWS_REGION:-us-east-1}"
  # TFC_VAULT_BACKED_AWS_AUTH_TYPE=assumed_role, TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE=deploy,
  # TFC_VAULT_BACKED_AWS_RUN_ROLE_ARN=$AWS_ROLE_ARN  ->  GET aws/sts/deploy?role_arn=…
  # STS credentials cannot be revoked: keep default_sts_ttl near the run's length.
  "$VAULT_CLI" write aws/roles/deploy credential_type=assumed_role role_arns="$AWS_ROLE_ARN" \
    default_sts_ttl=1h max_sts_ttl=2h
}

gcp() {
  : "${GCP_CREDENTIALS:?}" "${GCP_PROJECT:?}" "${GCP_SERVICE_ACCOUNT:?an existing service account e-mail}"
  enable gcp
  "$VAULT_CLI" write gcp/config credentials=@"$GCP_CREDENTIALS"
  bindings=$(mktemp)
  trap 'rm -f "$bindings"' RETURN
  cat >"$bindings" <<HCL
resource "//cloudresourcemanager.googleapis.com/projects/$GCP_PROJECT" {
  roles = ["roles/viewer"]
}
HCL
  # TFC_VAULT_BACKED_GCP_AUTH_TYPE=roleset/access_token, TFC_VAULT_BACKED_GCP_RUN_VAULT_ROLESET=viewer
  #   ->  GET gcp/roleset/viewer/token
  "$VAULT_CLI" write gcp/roleset/viewer project="$GCP_PROJECT" secret_type=access_token \
    token_scopes=https://www.googleapis.com/auth/cloud-platform bindings=@"$bindings"
  # TFC_VAULT_BACKED_GCP_AUTH_TYPE=static_account/service_account_key,
  # TFC_VAULT_BACKED_GCP_RUN_VAULT_STATIC_ACCOUNT=deployer  ->  GET gcp/static-account/deployer/key
  "$VAULT_CLI" write gcp/static-account/deployer service_account_email="$GCP_SERVICE_ACCOUNT" \
    secret_type=service_account_key bindings=@"$bindings"
}

azure() {
  : "${AZURE_SUBSCRIPTION_ID:?}" "${AZURE_TENANT_ID:?}" "${AZURE_CLIENT_ID:?}" "${AZURE_CLIENT_SECRET:?}" "${AZURE_SCOPE:?a subscription or resource group id}"
  enable azure
  "$VAULT_CLI" write azure/config subscription_id="$AZURE_SUBSCRIPTION_ID" tenant_id="$AZURE_TENANT_ID" \
    client_id="$AZURE_CLIENT_ID" client_secret="$AZURE_CLIENT_SECRET"
  # TFC_VAULT_BACKED_AZURE_RUN_VAULT_ROLE=contributor  ->  GET azure/creds/contributor
  # A new service principal takes time to propagate: TFC_VAULT_BACKED_AZURE_SLEEP_SECONDS=60 or so.
  "$VAULT_CLI" write azure/roles/contributor ttl=1h max_ttl=2h azure_roles=- <<JSON
[{"role_name": "Contributor", "scope": "$AZURE_SCOPE"}]
JSON
}

set -x
for engine in $ENGINES; do
  case "$engine" in
    aws | gcp | azure) "$engine" ;;
    *) echo "engines.sh: unknown engine $engine (aws, gcp, azure)" >&2; exit 64 ;;
  esac
done
