output "stream_name" {
  description = "Set as forward.kinesis.stream_name (agents) and kinesis.stream_name (aggregator)."
  value       = module.selfheal.stream_name
}

output "lake_location" {
  description = "Set as the aggregator's lake.location."
  value       = module.selfheal.lake_location
}

output "model_location" {
  description = "`selfheal model publish --to` this; the agents' models.source with S3 models."
  value       = module.selfheal.model_location
}

output "table_names" {
  description = "DynamoDB tables (incidents: the aggregator's incidents.store.table, heal actions included; leases)."
  value       = module.selfheal.table_names
}

output "hmac_secret_arn" {
  description = "Secret to put the heal API's HMAC keys in."
  value       = module.selfheal.hmac_secret_arn
}

output "notification_topic_arn" {
  description = "SNS topic for the aggregator's notifications."
  value       = module.selfheal.notification_topic_arn
}

output "role_arns" {
  description = "eks.amazonaws.com/role-arn of each service account."
  value       = module.selfheal.role_arns
}
