# The policy of the token tfe-oidc's Vault transit key store uses (keys.vault.token_file, or an
# AppRole with keys.vault.role_id + secret_id_file). It covers one transit key and one lifecycle
# record, and nothing else: no export, no backup, no other key, no other secret. Replace
# "transit" (keys.vault.mount), "tfe-oidc" (keys.vault.key), "secret" (keys.vault.kv_mount) and
# "tfe-oidc/tfe-oidc" (keys.vault.kv_path, by default "tfe-oidc/<key>") if you changed them.
#
#   bao secrets enable transit            # once; the KV v2 mount "secret" must exist too
#   bao policy write tfe-oidc-keys transit-policy.hcl
#   bao token create -policy=tfe-oidc-keys -no-default-policy -orphan -period=24h

# Read the key's versions (public keys only: the key is created non-exportable), and create it
# on the first start.
path "transit/keys/tfe-oidc" {
  capabilities = ["read", "create", "update"]
}

# A new version for each next key.
path "transit/keys/tfe-oidc/rotate" {
  capabilities = ["update"]
}

# The signing floor (min_encryption_version: retired versions cannot sign) and the lowest
# version kept (min_decryption_version).
path "transit/keys/tfe-oidc/config" {
  capabilities = ["update"]
}

# Destroys the versions no longer published.
path "transit/keys/tfe-oidc/trim" {
  capabilities = ["update"]
}

# Signing, always with an explicit key_version.
path "transit/sign/tfe-oidc/sha2-256" {
  capabilities = ["update"]
}

# The lifecycle record, written with check-and-set (and its earlier versions read, when the
# latest was deleted or rolled back).
path "secret/data/tfe-oidc/tfe-oidc" {
  capabilities = ["read", "create", "update"]
}

# The record's metadata, read only when its latest version is unreadable: tells a deleted record
# (refused until it is restored) from one never written (a new key history).
path "secret/metadata/tfe-oidc/tfe-oidc" {
  capabilities = ["read"]
}

# With an AppRole, tfe-oidc logs in again at two thirds of the token's TTL;
# auth/approle/login needs no policy.

# A token from a file that is renewable (a periodic token, -period=24h) is renewed by tfe-oidc
# once less than half of its TTL is left; these two paths (also in Vault's default policy) let it.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}
