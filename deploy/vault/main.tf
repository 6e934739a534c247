# The same wiring as configure.sh, as Terraform (hashicorp/vault provider): a JWT auth method
# that discovers a tfe-oidc issuer over HTTPS with a private CA, a policy, and the role(s) TFE
# logs in with. The provider reads VAULT_ADDR and VAULT_TOKEN from the environment.
#
#   terraform init && terraform apply \
#     -var issuer=https://tfe-oidc.internal:8443 -var ca_file=/etc/tfe-oidc/tls/ca.pem \
#     -var organization=acme -var workspace=prod
#
# configure.sh is exercised against a real OpenBao by tests/it/openbao.rs; this file writes the
# same values (see README.md).

terraform {
  required_version = ">= 1.3"
  required_providers {
    vault = {
      source  = "hashicorp/vault"
      version = ">= 4.0.0"
    }
  }
}

provider "vault" {}

variable "issuer" {
  description = "tfe-oidc's issuer URL, byte for byte (scheme://host[:port], no trailing slash)."
  type        = string
  validation {
    condition     = can(regex("^https?://[^/?#]+$", var.issuer))
    error_message = "The issuer is scheme://host[:port], without a path or a trailing slash."
  }
}

variable "ca_file" {
  description = "PEM CA (or the leaf certificate) of the discovery listener; null to use the system roots."
  type        = string
  default     = null
}

variable "mount" {
  description = "Path of the JWT auth method (TFC_VAULT_AUTH_PATH)."
  type        = string
  default     = "jwt"
}

variable "organization" {
  description = "TFE organization name."
  type        = string
  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,90}$", var.organization))
    error_message = "Letters, digits, - and _ only."
  }
}

variable "project" {
  description = "TFE project name, or * for any project."
  type        = string
  default     = "*"
  validation {
    condition     = var.project == "*" || can(regex("^[A-Za-z0-9_-]+( [A-Za-z0-9_-]+)*$", var.project))
    error_message = "A project name (letters, digits, -, _ and single inner spaces) or *."
  }
}

variable "workspace" {
  description = "TFE workspace name."
  type        = string
  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,90}$", var.workspace))
    error_message = "Letters, digits, - and _ only."
  }
}

variable "per_phase_roles" {
  description = "One role per run phase (TFC_VAULT_PLAN_ROLE / TFC_VAULT_APPLY_ROLE) instead of one for both (TFC_VAULT_RUN_ROLE)."
  type        = bool
  default     = false
}

variable "audience" {
  description = "The aud of the tokens (TFC_VAULT_WORKLOAD_IDENTITY_AUDIENCE)."
  type        = string
  default     = "vault.workload.identity"
}

variable "token_ttl" {
  description = "TTL of the Vault tokens, in seconds."
  type        = number
  default     = 1200
}

locals {
  name   = "tfe-${var.organization}-${var.workspace}"
  phases = var.per_phase_roles ? tomap({ plan = "plan", apply = "apply" }) : tomap({ run = "*" })
}

resource "vault_jwt_auth_backend" "tfe" {
  description           = "Terraform Enterprise run identity tokens, signed by tfe-oidc"
  path                  = var.mount
  type                  = "jwt"
  oidc_discovery_url    = var.issuer
  oidc_discovery_ca_pem = var.ca_file == null ? null : file(var.ca_file)
  bound_issuer          = var.issuer
  jwt_supported_algs    = ["RS256"]
}

resource "vault_policy" "workspace" {
  name   = local.name
  policy = <<-EOT
    # What the workspace may read.
    path "secret/data/tfe/${var.organization}/${var.workspace}/*" {
      capabilities = ["read"]
    }

    # The secrets-engine roles of its Vault-backed dynamic credentials (engines/main.tf).
    path "aws/creds/deploy" { capabilities = ["read"] }
    path "aws/sts/deploy" { capabilities = ["read"] }
    path "gcp/roleset/viewer/token" { capabilities = ["read"] }
    path "gcp/static-account/deployer/key" { capabilities = ["read"] }
    path "azure/creds/contributor" { capabilities = ["read"] }

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
  EOT
}

resource "vault_jwt_auth_backend_role" "workspace" {
  for_each = local.phases

  backend           = vault_jwt_auth_backend.tfe.path
  role_name         = each.key == "run" ? local.name : "${local.name}-${each.key}"
  role_type         = "jwt"
  bound_audiences   = [var.audience]
  bound_claims_type = "glob"
  bound_claims = {
    sub = "organization:${var.organization}:project:${var.project}:workspace:${var.workspace}:run_phase:${each.value}"
  }
  user_claim     = "terraform_full_workspace"
  token_policies = [vault_policy.workspace.name]
  token_ttl      = var.token_ttl
}

output "workspace_variables" {
  description = "The variables to set on the TFE workspace (plus TFC_VAULT_ADDR)."
  value = merge(
    { TFC_VAULT_PROVIDER_AUTH = "true" },
    {
      for phase, role in vault_jwt_auth_backend_role.workspace :
      "TFC_VAULT_${upper(phase)}_ROLE" => role.role_name
    },
    { for k, v in { TFC_VAULT_AUTH_PATH = var.mount } : k => v if v != "jwt" },
    {
      for k, v in { TFC_VAULT_WORKLOAD_IDENTITY_AUDIENCE = var.audience } :
      k => v if v != "vault.workload.identity"
    },
  )
}
