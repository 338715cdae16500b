# The AWS side of selfheal: the record stream the agents write, the lake bucket (Parquet and
# published models), the aggregator's tables, the heal API's HMAC key, the notification topic,
# one customer-managed KMS key for all of it, and least-privilege roles (iam.tf).

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  account   = data.aws_caller_identity.current.account_id
  region    = data.aws_region.current.region
  partition = data.aws_partition.current.partition
  bucket    = var.bucket_name != "" ? var.bucket_name : "${var.name}-lake-${local.account}-${local.region}"
  tags      = merge({ "app.kubernetes.io/part-of" = "selfheal" }, var.tags)
}

# --- KMS: one key encrypts the stream, the bucket, the tables, the secret and the topic --------

data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_109:a key policy's Resource "*" is the key itself; this statement is the account's default that lets IAM policies (iam.tf, each scoped to this key's ARN) grant its use
  #checkov:skip=CKV_AWS_111:as above: the key policy's only statement delegates to IAM in this account, as AWS's default key policy does
  #checkov:skip=CKV_AWS_356:a key policy cannot name the key's ARN before the key exists; "*" in a key policy means this key only
  statement {
    sid       = "AccountAdministersThroughIam"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account}:root"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "${var.name}: records, lake, tables, HMAC key and notifications"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
  tags                    = local.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

# --- Kinesis: the agents' records ----------------------------------------------------------

resource "aws_kinesis_stream" "records" {
  name             = "${var.name}-records"
  shard_count      = var.kinesis_shard_count
  retention_period = var.kinesis_retention_hours
  encryption_type  = "KMS"
  kms_key_id       = aws_kms_key.this.arn

  stream_mode_details {
    stream_mode = var.kinesis_shard_count == null ? "ON_DEMAND" : "PROVISIONED"
  }

  tags = local.tags
}

# --- S3: the lake and the published models -------------------------------------------------

resource "aws_s3_bucket" "lake" {
  #checkov:skip=CKV_AWS_144:cross-region replication doubles the lake's cost and is a recovery choice per installation; versioning and the lifecycle's noncurrent-version retention cover overwrites and deletes
  #checkov:skip=CKV2_AWS_62:nothing consumes bucket events: the aggregator writes the lake and the trainer lists it when it runs
  bucket = local.bucket
  tags   = local.tags
}

resource "aws_s3_bucket_ownership_controls" "lake" {
  bucket = aws_s3_bucket.lake.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "lake" {
  bucket                  = aws_s3_bucket.lake.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "lake" {
  bucket = aws_s3_bucket.lake.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "lake" {
  bucket = aws_s3_bucket.lake.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.this.arn
    }
    # One data key per bucket instead of a KMS call per object: the lake writes many objects.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "lake" {
  bucket = aws_s3_bucket.lake.id

  # Versioning must be on before noncurrent-version rules mean anything.
  depends_on = [aws_s3_bucket_versioning.lake]

  rule {
    id     = "lake-to-cheaper-tiers"
    status = "Enabled"
    filter {
      prefix = var.lake_prefix
    }
    transition {
      days          = var.lake_infrequent_access_days
      storage_class = "STANDARD_IA"
    }
    transition {
      days          = var.lake_glacier_days
      storage_class = "GLACIER_IR"
    }
    dynamic "expiration" {
      for_each = var.lake_expiration_days > 0 ? [var.lake_expiration_days] : []
      content {
        days = expiration.value
      }
    }
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
  }

  # Models stay in STANDARD (small, read by every agent); only replaced versions expire.
  rule {
    id     = "models-noncurrent"
    status = "Enabled"
    filter {
      prefix = var.model_prefix
    }
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
  }

  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

resource "aws_s3_bucket_logging" "lake" {
  count         = var.access_log_bucket != "" ? 1 : 0
  bucket        = aws_s3_bucket.lake.id
  target_bucket = var.access_log_bucket
  target_prefix = "${local.bucket}/"
}

# TLS only: every request over plain HTTP is denied, whoever makes it.
data "aws_iam_policy_document" "lake_bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.lake.arn,
      "${aws_s3_bucket.lake.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "lake" {
  bucket = aws_s3_bucket.lake.id
  policy = data.aws_iam_policy_document.lake_bucket.json

  # A bucket policy is refused while the public access block is being applied.
  depends_on = [aws_s3_bucket_public_access_block.lake]
}

# --- DynamoDB: incidents and heal actions, leases -------------------------------------------
# The aggregator's store (aggregator/src/store/dynamodb.rs) is ONE table keyed by a string
# partition key `pk` and a string sort key `sk`: incidents (`pk = INC`), their events, silences,
# dedup ids and the heal actions' exactly-once records (`pk = ACT`, a PutItem conditional on
# attribute_not_exists) all live in it, so "incidents" is also the actions table (the
# aggregator's incidents.store.table). "leases" is for the DynamoDB checkpoint store with shard
# leases that several aggregator replicas need (docs/ARCHITECTURE.md); nothing writes it until
# that store lands. Same key schema, point-in-time recovery and the stack's key on each; pay per
# request: the load is bursty (incident storms) and small on average.

locals {
  tables = {
    incidents = "${var.name}-incidents"
    leases    = "${var.name}-leases"
  }
}

resource "aws_dynamodb_table" "this" {
  for_each = local.tables

  name                        = each.value
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "pk"
  range_key                   = "sk"
  deletion_protection_enabled = var.deletion_protection

  attribute {
    name = "pk"
    type = "S"
  }

  attribute {
    name = "sk"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.this.arn
  }

  tags = local.tags
}

# --- Secrets Manager: the heal API's HMAC key ----------------------------------------------
# Created empty: the key is put by the operator (docs/deploy.md), so it is never in Terraform's
# state.

resource "aws_secretsmanager_secret" "hmac" {
  #checkov:skip=CKV2_AWS_57:rotation is by key id (the heal API accepts the old and the new key while both are in the secret, docs/deploy.md), done by the operator; a rotation Lambda would have to know both ends
  name                    = "${var.name}/heal-api-hmac"
  description             = "HMAC-SHA256 keys the aggregator signs heal API requests with, by key id"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 30
  tags                    = local.tags
}

# --- SNS: notifications ----------------------------------------------------------------------

resource "aws_sns_topic" "notifications" {
  name              = "${var.name}-notifications"
  kms_master_key_id = aws_kms_key.this.arn
  tags              = local.tags
}
