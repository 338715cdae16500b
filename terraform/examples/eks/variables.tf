variable "region" {
  description = "AWS region of the stack (and of the EKS cluster)."
  type        = string
}

variable "cluster_name" {
  description = "Name of the EKS cluster whose service accounts assume the roles (IRSA)."
  type        = string
}

variable "environment" {
  description = "Value of the `environment` tag on every resource."
  type        = string
  default     = "production"
}

variable "name" {
  description = "Prefix of every resource name."
  type        = string
  default     = "selfheal"
}

variable "kinesis_shard_count" {
  description = "Provisioned shards (about 200 nodes per shard at the default sampling); null for on-demand."
  type        = number
  default     = null
}

variable "trusted_role_arns" {
  description = "Extra principals per role (agent, aggregator, heal_api, trainer), e.g. the CI role that trains and publishes models."
  type        = map(list(string))
  default     = {}
}

variable "access_log_bucket" {
  description = "Bucket for the lake bucket's access logs; empty: none."
  type        = string
  default     = ""
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}
