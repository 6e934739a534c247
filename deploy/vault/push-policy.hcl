# The policy of the token tfe-oidc's push mode uses ([[push]] token_file, or the AppRole below).
# It reads and rewrites the JWT auth mount's config and nothing else: not its roles, not any
# other mount, not a secret. Replace "jwt" with the mount of your [[push]] table (its `mount`).
#
#   bao policy write tfe-oidc-push push-policy.hcl
#   bao token create -policy=tfe-oidc-push -no-default-policy -orphan -period=24h
#
# The config is read first and written back whole: Vault replaces the whole config on a write,
# so "read" is needed to keep the mount's other settings (default_role, ...).
path "auth/jwt/config" {
  capabilities = ["read", "update"]
}

# Only with an AppRole login (role_id + secret_id_file): the login itself needs no policy, as
# auth/approle/login is unauthenticated. tfe-oidc logs in again at two thirds of the token's TTL
# and whenever Vault refuses the token.

# A token from a file that is renewable (a periodic token, -period=24h) is renewed by tfe-oidc
# once less than half of its TTL is left; these two paths (also in Vault's default policy) let it.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}
