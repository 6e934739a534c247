# The policy of the tokens that workspace acme/prod gets from the role tfe-acme-prod.
# Adapt the secret paths to your workspace; keep the three token paths, which TFE uses to look
# up, renew and revoke the Vault token it holds for the run.

# What the workspace may read.
path "secret/data/tfe/acme/prod/*" {
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
