# Least-privilege roles, one per program. Each policy names the actions that program's code
# calls (the comments say where) on this stack's resources only; tests/terraform.rs reads these
# documents and asserts every role's actions are exactly these. KMS use is further limited to
# the services that use the key on the caller's behalf (kms:ViaService).

locals {
  roles = merge(
    {
      agent      = var.agent_service_account
      aggregator = var.aggregator_service_account
      trainer    = var.trainer_service_account
    },
    var.heal_api_reads_secret ? { heal_api = var.heal_api_service_account } : {},
  )
  via = { for s in ["kinesis", "s3", "sns", "secretsmanager"] : s => "${s}.${local.region}.amazonaws.com" }
}

data "aws_iam_policy_document" "trust" {
  for_each = local.roles

  # IRSA: the role's Kubernetes service account, through the cluster's OIDC provider.
  dynamic "statement" {
    for_each = var.oidc_provider_arn != "" ? [each.value] : []
    content {
      sid     = "ServiceAccount"
      actions = ["sts:AssumeRoleWithWebIdentity"]
      principals {
        type        = "Federated"
        identifiers = [var.oidc_provider_arn]
      }
      condition {
        test     = "StringEquals"
        variable = "${var.oidc_issuer}:sub"
        values   = ["system:serviceaccount:${statement.value}"]
      }
      condition {
        test     = "StringEquals"
        variable = "${var.oidc_issuer}:aud"
        values   = ["sts.amazonaws.com"]
      }
    }
  }

  # Programs outside EKS (a CI runner training models, an aggregator on EC2).
  dynamic "statement" {
    for_each = length(lookup(var.trusted_role_arns, each.key, [])) > 0 ? [each.key] : []
    content {
      sid     = "TrustedRoles"
      actions = ["sts:AssumeRole"]
      principals {
        type        = "AWS"
        identifiers = var.trusted_role_arns[statement.value]
      }
    }
  }
}

resource "aws_iam_role" "this" {
  for_each = local.roles

  name               = "${var.name}-${replace(each.key, "_", "-")}"
  description        = "selfheal ${each.key}"
  assume_role_policy = data.aws_iam_policy_document.trust[each.key].json
  tags               = local.tags

  lifecycle {
    precondition {
      condition     = (var.oidc_provider_arn != "" && var.oidc_issuer != "") || length(lookup(var.trusted_role_arns, each.key, [])) > 0
      error_message = "Nobody could assume the ${each.key} role: set oidc_provider_arn and oidc_issuer (IRSA), or trusted_role_arns[\"${each.key}\"]."
    }
  }
}

# --- agent: put records, nothing else (agent/src/forward/kinesis.rs: PutRecords) ------------

data "aws_iam_policy_document" "agent_put_records" {
  statement {
    sid       = "PutRecords"
    actions   = ["kinesis:PutRecords"]
    resources = [aws_kinesis_stream.records.arn]
  }
  statement {
    sid       = "EncryptRecords"
    actions   = ["kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.via.kinesis]
    }
  }
}

resource "aws_iam_role_policy" "agent_put_records" {
  name   = "put-records"
  role   = aws_iam_role.this["agent"].id
  policy = data.aws_iam_policy_document.agent_put_records.json
}

# --- agents' model pull: read the model prefix (agent/src/models/mirror.rs: GetObject) ------
# ListBucket on the prefix makes a missing object a 404 (a family without a model) instead
# of a 403.

data "aws_iam_policy_document" "model_pull" {
  statement {
    sid       = "ReadModels"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.lake.arn}/${var.model_prefix}*"]
  }
  statement {
    sid       = "ListModels"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.lake.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.model_prefix}*"]
    }
  }
  statement {
    sid       = "DecryptModels"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.via.s3]
    }
  }
}

resource "aws_iam_role_policy" "agent_model_pull" {
  count  = var.agent_model_pull ? 1 : 0
  name   = "model-pull"
  role   = aws_iam_role.this["agent"].id
  policy = data.aws_iam_policy_document.model_pull.json
}

# --- aggregator: read the stream, write its tables, the lake and the topic ------------------

data "aws_iam_policy_document" "aggregator" {
  # aggregator/src/sources/kinesis/: ListShards, GetShardIterator, GetRecords.
  statement {
    sid       = "ReadStream"
    actions   = ["kinesis:ListShards", "kinesis:GetShardIterator", "kinesis:GetRecords"]
    resources = [aws_kinesis_stream.records.arn]
  }
  # aggregator/src/store/dynamodb.rs: DescribeTable at start, Query/GetItem to read, PutItem,
  # DeleteItem and BatchWriteItem to write; TransactWriteItems is authorized per item as
  # PutItem/UpdateItem/DeleteItem/ConditionCheckItem (the heal actions' exactly-once records are
  # conditional PutItems and UpdateItems; leases will be conditional writes). No CreateTable: the
  # tables are these.
  statement {
    sid = "WriteTables"
    actions = [
      "dynamodb:DescribeTable",
      "dynamodb:GetItem",
      "dynamodb:Query",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
      "dynamodb:DeleteItem",
      "dynamodb:BatchWriteItem",
      "dynamodb:ConditionCheckItem",
    ]
    resources = [for t in aws_dynamodb_table.this : t.arn]
  }
  # lake/src/store.rs: PutObject under the lake prefix; the aggregator never reads the lake.
  statement {
    sid       = "WriteLake"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.lake.arn}/${var.lake_prefix}*"]
  }
  statement {
    sid       = "Notify"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.notifications.arn]
  }
  # The remote heal API executor signs its requests with this key.
  statement {
    sid       = "ReadHmacKey"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.hmac.arn]
  }
  statement {
    sid       = "UseKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.via.kinesis, local.via.s3, local.via.sns, local.via.secretsmanager]
    }
  }
}

resource "aws_iam_role_policy" "aggregator" {
  name   = "aggregator"
  role   = aws_iam_role.this["aggregator"].id
  policy = data.aws_iam_policy_document.aggregator.json
}

# --- trainer: read the lake, write the model prefix -----------------------------------------
# lake/src/store.rs (ListObjectsV2, GetObject) to read; model-export/src/publish/s3.rs reads
# the latest pointer and an existing version back (GetObject) and writes (PutObject) under the
# model prefix. It cannot touch the lake's objects or anything else.

data "aws_iam_policy_document" "trainer" {
  statement {
    sid       = "ListLakeAndModels"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.lake.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.lake_prefix}*", "${var.model_prefix}*"]
    }
  }
  statement {
    sid     = "ReadLakeAndModels"
    actions = ["s3:GetObject"]
    resources = [
      "${aws_s3_bucket.lake.arn}/${var.lake_prefix}*",
      "${aws_s3_bucket.lake.arn}/${var.model_prefix}*",
    ]
  }
  statement {
    sid       = "PublishModels"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.lake.arn}/${var.model_prefix}*"]
  }
  statement {
    sid       = "UseKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.via.s3]
    }
  }
}

resource "aws_iam_role_policy" "trainer" {
  name   = "trainer"
  role   = aws_iam_role.this["trainer"].id
  policy = data.aws_iam_policy_document.trainer.json
}

# --- heal API (optional): read its HMAC key from Secrets Manager ----------------------------

data "aws_iam_policy_document" "heal_api" {
  statement {
    sid       = "ReadHmacKey"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.hmac.arn]
  }
  statement {
    sid       = "DecryptHmacKey"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.via.secretsmanager]
    }
  }
}

resource "aws_iam_role_policy" "heal_api" {
  count  = var.heal_api_reads_secret ? 1 : 0
  name   = "heal-api"
  role   = aws_iam_role.this["heal_api"].id
  policy = data.aws_iam_policy_document.heal_api.json
}
