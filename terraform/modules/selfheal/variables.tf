variable "name" {
  description = "Prefix of every resource name (stream, bucket, tables, secret, topic, roles, key alias). Lowercase letters, digits and hyphens."
  type        = string
  default     = "selfheal"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name must be 2-31 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "tags" {
  description = "Tags added to every resource that takes tags."
  type        = map(string)
  default     = {}
}

# --- Kinesis --------------------------------------------------------------------------------

variable "kinesis_shard_count" {
  description = "Provisioned shards of the record stream (1 MB/s or 1,000 records/s of writes each; docs/deploy.md sizes them: about 200 nodes per shard: each node forwards ~4 records/s at the default sampling). null: on-demand capacity mode, which scales by itself and costs more at steady load."
  type        = number
  default     = null

  validation {
    condition     = var.kinesis_shard_count == null ? true : (var.kinesis_shard_count >= 1 && floor(var.kinesis_shard_count) == var.kinesis_shard_count)
    error_message = "kinesis_shard_count must be a whole number of at least 1, or null for on-demand."
  }
}

variable "kinesis_retention_hours" {
  description = "Hours a record stays in the stream. It is how long the aggregator may be down without losing records (the agents' spools add their own margin). 24 to 8760."
  type        = number
  default     = 48

  validation {
    condition     = var.kinesis_retention_hours >= 24 && var.kinesis_retention_hours <= 8760
    error_message = "kinesis_retention_hours must be between 24 and 8760."
  }
}

# --- S3 lake --------------------------------------------------------------------------------

variable "bucket_name" {
  description = "Name of the lake bucket; empty: \"<name>-lake-<account id>-<region>\" (bucket names are global)."
  type        = string
  default     = ""
}

variable "lake_prefix" {
  description = "Key prefix of the lake's Parquet objects in the bucket (the aggregator's lake.location is s3://<bucket>/<lake_prefix>). Ends with a slash."
  type        = string
  default     = "lake/"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]*/$", var.lake_prefix))
    error_message = "lake_prefix must be one path segment ending with a slash, e.g. \"lake/\"."
  }
}

variable "model_prefix" {
  description = "Key prefix of the published models in the bucket (`selfheal model publish --to s3://<bucket>/<model_prefix>`; the agents' models.source). Ends with a slash."
  type        = string
  default     = "models/"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]*/$", var.model_prefix))
    error_message = "model_prefix must be one path segment ending with a slash, e.g. \"models/\"."
  }
}

variable "lake_infrequent_access_days" {
  description = "Days after which lake objects move to STANDARD_IA (the trainer reads recent hours most; at least 30, S3's minimum for the transition)."
  type        = number
  default     = 30

  validation {
    condition     = var.lake_infrequent_access_days >= 30
    error_message = "lake_infrequent_access_days must be at least 30 (S3's minimum for STANDARD_IA)."
  }
}

variable "lake_glacier_days" {
  description = "Days after which lake objects move to GLACIER_IR (still readable in milliseconds, for retraining on old incidents). Must exceed lake_infrequent_access_days by at least 30."
  type        = number
  default     = 90
}

variable "lake_expiration_days" {
  description = "Days after which lake objects are deleted; 0 keeps them forever."
  type        = number
  default     = 400

  validation {
    condition     = var.lake_expiration_days == 0 || var.lake_expiration_days >= 1
    error_message = "lake_expiration_days must be 0 (keep) or a positive number of days."
  }
}

variable "noncurrent_version_days" {
  description = "Days an overwritten or deleted object's previous version is kept (versioning protects the lake and the models from a bad write)."
  type        = number
  default     = 30
}

variable "access_log_bucket" {
  description = "Bucket that receives the lake bucket's S3 server access logs; empty: no access logging. It must allow the S3 logging service to write to it."
  type        = string
  default     = ""
}

# --- DynamoDB -------------------------------------------------------------------------------

variable "deletion_protection" {
  description = "Protect the DynamoDB tables and the KMS key against deletion (turn off only to tear down a test stack)."
  type        = bool
  default     = true
}

# --- Identities -----------------------------------------------------------------------------

variable "oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider, for IRSA: each role is then assumable by its Kubernetes service account (see *_service_account). Empty: no IRSA trust."
  type        = string
  default     = ""
}

variable "oidc_issuer" {
  description = "The cluster's OIDC issuer without the scheme, e.g. oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE (required with oidc_provider_arn)."
  type        = string
  default     = ""
}

variable "agent_service_account" {
  description = "namespace:name of the agents' Kubernetes service account (daemonset/system/serviceaccount.yaml)."
  type        = string
  default     = "selfheal-system:selfheal-agent"
}

variable "aggregator_service_account" {
  description = "namespace:name of the aggregator's service account when it runs in EKS (daemonset/components/aggregator/)."
  type        = string
  default     = "selfheal-control:selfheal-aggregator"
}

variable "heal_api_service_account" {
  description = "namespace:name of the heal API's service account (daemonset/heal-api/)."
  type        = string
  default     = "selfheal-control:selfheal-heal-api"
}

variable "trainer_service_account" {
  description = "namespace:name of the trainer's service account, when it runs in EKS (e.g. a CronJob)."
  type        = string
  default     = "selfheal-control:selfheal-trainer"
}

variable "trusted_role_arns" {
  description = "Extra IAM principals (role ARNs) allowed to assume each role, for programs outside EKS: keys agent, aggregator, heal_api, trainer. E.g. { trainer = [\"arn:aws:iam::123456789012:role/ci\"] }."
  type        = map(list(string))
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.trusted_role_arns) : contains(["agent", "aggregator", "heal_api", "trainer"], k)])
    error_message = "trusted_role_arns keys must be among agent, aggregator, heal_api, trainer."
  }
}

variable "agent_model_pull" {
  description = "Give the agent role read access to the model prefix (agents with models.source = \"s3://...\"). Agents that read models from ConfigMaps need none."
  type        = bool
  default     = true
}

variable "heal_api_reads_secret" {
  description = "Give the heal API a role that reads the HMAC key from Secrets Manager (its secrets-manager key source). false: the key reaches the heal API as a Kubernetes Secret and the heal API needs no AWS access."
  type        = bool
  default     = false
}
