# The policy of the tokens that workspace acme/prod gets from the role tfe-acme-prod.
# Adapt the secret paths to your workspace; keep the three token paths, which TFE (and
# tfe-oidc's POST /v1/credentials/revoke) use to look up, renew and revoke the Vault token it
# holds for the run.

# What the workspace may read.
path "secret/data/tfe/acme/prod/*" {
  capabilities = ["read"]
}

# The secrets-engine roles its Vault-backed dynamic credentials use (engines.sh writes them).
# The credential exchange reads them with GET, so "read" is all it needs; the role ARN of an
# assumed_role read travels as a query parameter.
path "aws/creds/deploy" {                 # TFC_VAULT_BACKED_AWS_AUTH_TYPE=iam_user
  capabilities = ["read"]
}

path "aws/sts/deploy" {                   # assumed_role, federation_token
  capabilities = ["read"]
}

path "gcp/roleset/viewer/token" {         # roleset/access_token
  capabilities = ["read"]
}

path "gcp/static-account/deployer/key" {  # static_account/service_account_key
  capabilities = ["read"]
}

path "azure/creds/contributor" {
  capabilities = ["read"]
}

# TFE manages the token's life.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/revoke-self" {
  capabilities = ["update"]
}
