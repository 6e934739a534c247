# The secrets-engine side of Vault-backed dynamic credentials, as Terraform: the same engines and
# roles as ../engines.sh, at the paths ../policy.hcl grants and tfe-oidc's credential exchange
# reads. Apply it next to ../main.tf (the JWT auth side). Each engine is optional: leave its
# variables unset to skip it.
#
#   terraform init && terraform apply -var aws_role_arn=arn:aws:iam::123456789012:role/deploy …

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

variable "aws_access_key" {
  type      = string
  default   = null
  sensitive = true
}

variable "aws_secret_key" {
  type      = string
  default   = null
  sensitive = true
}

variable "aws_role_arn" {
  description = "The IAM role the assumed_role credentials assume (TFC_VAULT_BACKED_AWS_RUN_ROLE_ARN)."
  type        = string
  default     = null
}

variable "gcp_credentials_file" {
  description = "JSON key of the service account Vault uses to manage GCP."
  type        = string
  default     = null
}

variable "gcp_project" {
  type    = string
  default = null
}

variable "gcp_service_account_email" {
  description = "An existing service account for the static account (its keys are what runs get)."
  type        = string
  default     = null
}

variable "azure" {
  description = "subscription_id, tenant_id, client_id, client_secret of Vault's service principal, and the scope runs get Contributor on."
  type = object({
    subscription_id = string
    tenant_id       = string
    client_id       = string
    client_secret   = string
    scope           = string
  })
  default   = null
  sensitive = true
}

locals {
  aws   = var.aws_role_arn == null ? {} : { on = true }
  gcp   = var.gcp_project == null ? {} : { on = true }
  azure = var.azure == null ? {} : { on = true }
}

# AWS: TFC_VAULT_BACKED_AWS_AUTH_TYPE=assumed_role, _RUN_VAULT_ROLE=deploy -> GET aws/sts/deploy
resource "vault_aws_secret_backend" "aws" {
  for_each   = local.aws
  path       = "aws"
  access_key = var.aws_access_key
  secret_key = var.aws_secret_key
}

resource "vault_aws_secret_backend_role" "deploy" {
  for_each        = local.aws
  backend         = vault_aws_secret_backend.aws["on"].path
  name            = "deploy"
  credential_type = "assumed_role"
  role_arns       = [var.aws_role_arn]
  default_sts_ttl = 3600
  max_sts_ttl     = 7200
}

# GCP: roleset/access_token (viewer) and static_account/service_account_key (deployer).
resource "vault_gcp_secret_backend" "gcp" {
  for_each    = local.gcp
  path        = "gcp"
  credentials = file(var.gcp_credentials_file)
}

resource "vault_gcp_secret_roleset" "viewer" {
  for_each     = local.gcp
  backend      = vault_gcp_secret_backend.gcp["on"].path
  roleset      = "viewer"
  secret_type  = "access_token"
  project      = var.gcp_project
  token_scopes = ["https://www.googleapis.com/auth/cloud-platform"]
  binding {
    resource = "//cloudresourcemanager.googleapis.com/projects/${var.gcp_project}"
    roles    = ["roles/viewer"]
  }
}

resource "vault_gcp_secret_static_account" "deployer" {
  for_each              = local.gcp
  backend               = vault_gcp_secret_backend.gcp["on"].path
  static_account        = "deployer"
  secret_type           = "service_account_key"
  service_account_email = var.gcp_service_account_email
  binding {
    resource = "//cloudresourcemanager.googleapis.com/projects/${var.gcp_project}"
    roles    = ["roles/viewer"]
  }
}

# Azure: TFC_VAULT_BACKED_AZURE_RUN_VAULT_ROLE=contributor -> GET azure/creds/contributor
resource "vault_azure_secret_backend" "azure" {
  for_each        = local.azure
  path            = "azure"
  subscription_id = var.azure.subscription_id
  tenant_id       = var.azure.tenant_id
  client_id       = var.azure.client_id
  client_secret   = var.azure.client_secret
}

resource "vault_azure_secret_backend_role" "contributor" {
  for_each = local.azure
  backend  = vault_azure_secret_backend.azure["on"].path
  role     = "contributor"
  ttl      = 3600
  max_ttl  = 7200
  azure_roles {
    role_name = "Contributor"
    scope     = var.azure.scope
  }
}

output "workspace_variables" {
  description = "The TFC_VAULT_BACKED_* variables that point at these roles (add them to the workspace)."
  value = merge(
    length(local.aws) == 0 ? {} : {
      TFC_VAULT_BACKED_AWS_AUTH           = "true"
      TFC_VAULT_BACKED_AWS_AUTH_TYPE      = "assumed_role"
      TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE = "deploy"
      TFC_VAULT_BACKED_AWS_RUN_ROLE_ARN   = var.aws_role_arn
    },
    length(local.gcp) == 0 ? {} : {
      TFC_VAULT_BACKED_GCP_AUTH              = "true"
      TFC_VAULT_BACKED_GCP_AUTH_TYPE         = "roleset/access_token"
      TFC_VAULT_BACKED_GCP_RUN_VAULT_ROLESET = "viewer"
    },
    length(local.azure) == 0 ? {} : {
      TFC_VAULT_BACKED_AZURE_AUTH           = "true"
      TFC_VAULT_BACKED_AZURE_RUN_VAULT_ROLE = "contributor"
    },
  )
}
