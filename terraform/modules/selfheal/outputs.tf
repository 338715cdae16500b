output "kms_key_arn" {
  description = "The stack's KMS key (stream, bucket, tables, secret, topic)."
  value       = aws_kms_key.this.arn
}

output "stream_name" {
  description = "The record stream: the agents' forward.kinesis.stream_name and the aggregator's kinesis.stream_name."
  value       = aws_kinesis_stream.records.name
}

output "stream_arn" {
  description = "ARN of the record stream."
  value       = aws_kinesis_stream.records.arn
}

output "bucket_name" {
  description = "The lake bucket (Parquet lake and published models)."
  value       = aws_s3_bucket.lake.bucket
}

output "lake_location" {
  description = "The aggregator's lake.location and the trainer's lake source."
  value       = "s3://${aws_s3_bucket.lake.bucket}/${var.lake_prefix}"
}

output "model_location" {
  description = "Where `selfheal model publish --to` writes and the agents' models.source reads."
  value       = "s3://${aws_s3_bucket.lake.bucket}/${var.model_prefix}"
}

output "table_names" {
  description = "DynamoDB tables by role: incidents (the aggregator's incidents.store.table, which also holds the heal actions' records) and leases (shard leases, for several aggregator replicas)."
  value       = { for k, t in aws_dynamodb_table.this : k => t.name }
}

output "hmac_secret_arn" {
  description = "The Secrets Manager secret holding the heal API's HMAC keys (put its value as docs/deploy.md says)."
  value       = aws_secretsmanager_secret.hmac.arn
}

output "notification_topic_arn" {
  description = "The SNS topic the aggregator notifies."
  value       = aws_sns_topic.notifications.arn
}

output "role_arns" {
  description = "Role ARN per program (agent, aggregator, trainer, and heal_api when heal_api_reads_secret): the eks.amazonaws.com/role-arn annotation of each service account."
  value       = { for k, r in aws_iam_role.this : k => r.arn }
}
