# A root module for one EKS cluster: `cp terraform.tfvars.example terraform.tfvars`, edit,
# `terraform init && terraform apply`. docs/deploy.md walks through it and what comes next.

provider "aws" {
  region = var.region

  default_tags {
    tags = { environment = var.environment }
  }
}

# The cluster's IAM OIDC provider, for IRSA (it exists once `eksctl utils
# associate-iam-oidc-provider` or the EKS module created it).
data "aws_eks_cluster" "this" {
  name = var.cluster_name
}

data "aws_iam_openid_connect_provider" "this" {
  url = data.aws_eks_cluster.this.identity[0].oidc[0].issuer
}

module "selfheal" {
  source = "../../modules/selfheal"

  name                = var.name
  kinesis_shard_count = var.kinesis_shard_count
  oidc_provider_arn   = data.aws_iam_openid_connect_provider.this.arn
  oidc_issuer         = replace(data.aws_eks_cluster.this.identity[0].oidc[0].issuer, "https://", "")
  trusted_role_arns   = var.trusted_role_arns
  access_log_bucket   = var.access_log_bucket
  tags                = var.tags
}
