//! `axnt-oauth setup` in aws mode: the two tables, exactly as the service reads and
//! writes them, idempotently.
//!
//! For each table: the key schema (`userId` HASH + `provider` / `timestamp`
//! RANGE, both `S`), on-demand billing (`PAY_PER_REQUEST`), TTL on `expiresAt`. Point-
//! in-time recovery is turned on for the tokens table only: its rows cannot be rebuilt
//! (a lost refresh token means every user reconnects), while flow logs are diagnostics
//! that expire after `AXNT_FLOW_LOG_RETENTION_DAYS` and would only add backup cost.
//!
//! Setup needs more than the run-time policy: `dynamodb:DescribeTable`, `CreateTable`,
//! `DescribeTimeToLive`, `UpdateTimeToLive`, `DescribeContinuousBackups` and
//! `UpdateContinuousBackups` on both tables. It runs as an operator, not as the
//! service. It never changes an existing table's keys or billing: a mismatch is
//! reported for a human to decide.
//!
//! The KMS key (with its alias) and the secret are not created here: their policies and
//! contents are the operator's decisions. [`other_resources`] checks they exist
//! (with run-time actions only) and prints the `aws` commands that create them.

use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, PointInTimeRecoverySpecification,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};

use super::AwsSettings;
use crate::aws::error::{AwsFailure, FailureKind, observe};

/// The attribute DynamoDB's TTL purges on, in both tables.
pub(crate) const TTL_ATTRIBUTE: &str = "expiresAt";
/// How long to wait for a new table to become ACTIVE.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(300);

/// One table as the service needs it.
#[derive(Debug, Clone)]
pub(crate) struct TableSpec {
    pub(crate) name: String,
    pub(crate) hash_key: &'static str,
    pub(crate) range_key: &'static str,
    pub(crate) point_in_time_recovery: bool,
}

impl TableSpec {
    /// The tokens table, the logs table and the events table, named by the settings.
    pub(crate) fn wanted(settings: &AwsSettings) -> [TableSpec; 3] {
        [
            TableSpec {
                name: settings.tokens_table.clone(),
                hash_key: "userId",
                range_key: "provider",
                point_in_time_recovery: true,
            },
            TableSpec {
                name: settings.logs_table.clone(),
                hash_key: "userId",
                range_key: "timestamp",
                point_in_time_recovery: false,
            },
            // Events are promises to the application (delivered at least once,
            // replayable within retention): backed up as the tokens are.
            TableSpec {
                name: settings.events_table.clone(),
                hash_key: "day",
                range_key: "id",
                point_in_time_recovery: true,
            },
        ]
    }

    fn describe_keys(&self) -> String {
        format!("{} S HASH, {} S RANGE", self.hash_key, self.range_key)
    }
}

/// One change setup makes (or, with `--dry-run`, would make).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    CreateTable { table: String, keys: String },
    EnableTtl { table: String },
    EnablePointInTimeRecovery { table: String },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CreateTable { table, keys } => {
                write!(f, "create table {table} ({keys}; PAY_PER_REQUEST)")
            }
            Self::EnableTtl { table } => write!(f, "enable TTL on {table}.{TTL_ATTRIBUTE}"),
            Self::EnablePointInTimeRecovery { table } => {
                write!(f, "enable point-in-time recovery on {table}")
            }
        }
    }
}

/// What setup found and did.
#[derive(Debug, Default)]
pub struct SetupReport {
    /// Changes made (or planned, on a dry run), in order.
    pub changes: Vec<Change>,
    /// Tables found as wanted, and anything left alone for a human (billing mode).
    pub notes: Vec<String>,
}

/// Why setup stopped.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

fn setup_error(action: &str, table: &str, region: &str, f: AwsFailure) -> SetupError {
    SetupError(match f.kind {
        FailureKind::AccessDenied => format!(
            "AccessDenied: the identity running setup lacks dynamodb:{action} on table/{table} \
             (setup needs DescribeTable, CreateTable, DescribeTimeToLive, UpdateTimeToLive, \
             DescribeContinuousBackups, UpdateContinuousBackups; the run-time policy is not enough) ({})",
            f.describe()
        ),
        FailureKind::Throttled => format!(
            "dynamodb:{action} on table/{table} throttled: run setup again ({})",
            f.describe()
        ),
        _ => format!(
            "dynamodb:{action} on table/{table} in region {region}: {}",
            f.describe()
        ),
    })
}

/// Brings both tables to the wanted state (or, with `dry_run`, only plans it).
pub async fn ensure_tables(
    settings: impl Into<AwsSettings>,
    dry_run: bool,
) -> Result<SetupReport, SetupError> {
    let settings: AwsSettings = settings.into();
    let settings = &settings;
    let config = crate::aws::sdk_config(settings.clone()).await;
    let client = Client::new(&config);
    let region = crate::aws::region_name(&config);
    let mut report = SetupReport::default();
    for spec in TableSpec::wanted(settings) {
        let changes = plan_table(&client, &region, &spec, &mut report.notes).await?;
        if !dry_run {
            for change in &changes {
                apply(&client, &region, &spec, change).await?;
            }
        }
        report.changes.extend(changes);
    }
    Ok(report)
}

async fn plan_table(
    client: &Client,
    region: &str,
    spec: &TableSpec,
    notes: &mut Vec<String>,
) -> Result<Vec<Change>, SetupError> {
    let table = spec.name.as_str();
    let mut changes = Vec::new();
    let described = observe(
        "dynamodb",
        "DescribeTable",
        client.describe_table().table_name(table).send().await,
    );
    let description = match described {
        Ok(out) => out.table,
        Err(f) if f.kind == FailureKind::NotFound => None,
        Err(f) => return Err(setup_error("DescribeTable", table, region, f)),
    };
    let Some(description) = description else {
        changes.push(Change::CreateTable {
            table: table.to_string(),
            keys: spec.describe_keys(),
        });
        changes.push(Change::EnableTtl {
            table: table.to_string(),
        });
        if spec.point_in_time_recovery {
            changes.push(Change::EnablePointInTimeRecovery {
                table: table.to_string(),
            });
        }
        return Ok(changes);
    };

    let key_of = |kind: KeyType| {
        description
            .key_schema()
            .iter()
            .find(|k| *k.key_type() == kind)
            .map(|k| k.attribute_name().to_string())
    };
    let type_of = |name: &str| {
        description
            .attribute_definitions()
            .iter()
            .find(|a| a.attribute_name() == name)
            .map(|a| a.attribute_type().clone())
    };
    let keys_ok = key_of(KeyType::Hash).as_deref() == Some(spec.hash_key)
        && key_of(KeyType::Range).as_deref() == Some(spec.range_key)
        && description.key_schema().len() == 2
        && type_of(spec.hash_key) == Some(ScalarAttributeType::S)
        && type_of(spec.range_key) == Some(ScalarAttributeType::S);
    if !keys_ok {
        return Err(SetupError(format!(
            "table {table} exists in region {region} with another key schema ({}); the service needs {}. \
             Point DYNAMODB_OAUTH_TABLE / DYNAMODB_OAUTH_LOGS_TABLE at another name, or move the data and recreate the table",
            description
                .key_schema()
                .iter()
                .map(|k| format!("{} {}", k.attribute_name(), k.key_type().as_str()))
                .collect::<Vec<_>>()
                .join(", "),
            spec.describe_keys()
        )));
    }
    let billing = description
        .billing_mode_summary()
        .and_then(|b| b.billing_mode())
        .cloned()
        .unwrap_or(BillingMode::Provisioned);
    if billing != BillingMode::PayPerRequest {
        notes.push(format!(
            "table {table} uses {} billing; axnt-oauth recommends on-demand (PAY_PER_REQUEST): it scales with traffic and costs nothing while idle. Left as it is \
             (to change: aws dynamodb update-table --table-name {table} --billing-mode PAY_PER_REQUEST)",
            billing.as_str()
        ));
    }

    let ttl = observe(
        "dynamodb",
        "DescribeTimeToLive",
        client
            .describe_time_to_live()
            .table_name(table)
            .send()
            .await,
    )
    .map_err(|f| setup_error("DescribeTimeToLive", table, region, f))?;
    let ttl = ttl.time_to_live_description();
    let ttl_status = ttl.and_then(|t| t.time_to_live_status()).cloned();
    let ttl_attribute = ttl.and_then(|t| t.attribute_name());
    match ttl_status {
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
            if ttl_attribute == Some(TTL_ATTRIBUTE) => {}
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling) => {
            return Err(SetupError(format!(
                "table {table} has TTL on {} instead of {TTL_ATTRIBUTE}; disable it first \
                 (aws dynamodb update-time-to-live --table-name {table} --time-to-live-specification \
                 AttributeName={},Enabled=false), then run setup again",
                ttl_attribute.unwrap_or("?"),
                ttl_attribute.unwrap_or("?")
            )));
        }
        Some(TimeToLiveStatus::Disabling) => {
            return Err(SetupError(format!(
                "TTL on table {table} is being disabled; run setup again when that has finished"
            )));
        }
        _ => changes.push(Change::EnableTtl {
            table: table.to_string(),
        }),
    }

    if spec.point_in_time_recovery {
        let backups = observe(
            "dynamodb",
            "DescribeContinuousBackups",
            client
                .describe_continuous_backups()
                .table_name(table)
                .send()
                .await,
        )
        .map_err(|f| setup_error("DescribeContinuousBackups", table, region, f))?;
        let enabled = backups
            .continuous_backups_description()
            .and_then(|d| d.point_in_time_recovery_description())
            .and_then(|p| p.point_in_time_recovery_status())
            .is_some_and(|s| s.as_str() == "ENABLED");
        if !enabled {
            changes.push(Change::EnablePointInTimeRecovery {
                table: table.to_string(),
            });
        }
    }
    if changes.is_empty() {
        notes.push(format!(
            "table {table} already as wanted ({}; TTL on {TTL_ATTRIBUTE}{})",
            spec.describe_keys(),
            if spec.point_in_time_recovery {
                "; point-in-time recovery on"
            } else {
                ""
            }
        ));
    }
    Ok(changes)
}

async fn apply(
    client: &Client,
    region: &str,
    spec: &TableSpec,
    change: &Change,
) -> Result<(), SetupError> {
    let table = spec.name.as_str();
    match change {
        Change::CreateTable { .. } => {
            let attribute = |name: &str| {
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
            };
            let key = |name: &str, kind: KeyType| {
                KeySchemaElement::builder()
                    .attribute_name(name)
                    .key_type(kind)
                    .build()
            };
            let build = |e: aws_sdk_dynamodb::error::BuildError| SetupError(e.to_string());
            let created = observe(
                "dynamodb",
                "CreateTable",
                client
                    .create_table()
                    .table_name(table)
                    .attribute_definitions(attribute(spec.hash_key).map_err(build)?)
                    .attribute_definitions(attribute(spec.range_key).map_err(build)?)
                    .key_schema(key(spec.hash_key, KeyType::Hash).map_err(build)?)
                    .key_schema(key(spec.range_key, KeyType::Range).map_err(build)?)
                    .billing_mode(BillingMode::PayPerRequest)
                    .send()
                    .await,
            );
            match created {
                Ok(_) => {}
                // Another setup created it meanwhile: fine, wait for it like ours.
                Err(f) if f.code.as_deref() == Some("ResourceInUseException") => {}
                Err(f) => return Err(setup_error("CreateTable", table, region, f)),
            }
            wait_until_active(client, region, table).await
        }
        Change::EnableTtl { .. } => {
            let spec = TimeToLiveSpecification::builder()
                .attribute_name(TTL_ATTRIBUTE)
                .enabled(true)
                .build()
                .map_err(|e| SetupError(e.to_string()))?;
            observe(
                "dynamodb",
                "UpdateTimeToLive",
                client
                    .update_time_to_live()
                    .table_name(table)
                    .time_to_live_specification(spec)
                    .send()
                    .await,
            )
            .map(drop)
            .map_err(|f| setup_error("UpdateTimeToLive", table, region, f))
        }
        Change::EnablePointInTimeRecovery { .. } => {
            let pitr = PointInTimeRecoverySpecification::builder()
                .point_in_time_recovery_enabled(true)
                .build()
                .map_err(|e| SetupError(e.to_string()))?;
            // Right after CreateTable, DynamoDB may answer that continuous backups are
            // not available yet: wait and try again.
            let deadline = Instant::now() + ACTIVE_TIMEOUT;
            loop {
                let result = observe(
                    "dynamodb",
                    "UpdateContinuousBackups",
                    client
                        .update_continuous_backups()
                        .table_name(table)
                        .point_in_time_recovery_specification(pitr.clone())
                        .send()
                        .await,
                );
                match result {
                    Ok(_) => return Ok(()),
                    Err(f)
                        if f.code.as_deref() == Some("ContinuousBackupsUnavailableException")
                            && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    Err(f) => {
                        return Err(setup_error("UpdateContinuousBackups", table, region, f));
                    }
                }
            }
        }
    }
}

async fn wait_until_active(client: &Client, region: &str, table: &str) -> Result<(), SetupError> {
    let deadline = Instant::now() + ACTIVE_TIMEOUT;
    let mut pause = Duration::from_millis(200);
    loop {
        let out = observe(
            "dynamodb",
            "DescribeTable",
            client.describe_table().table_name(table).send().await,
        )
        .map_err(|f| setup_error("DescribeTable", table, region, f))?;
        if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SetupError(format!(
                "table {table} did not become ACTIVE within {} s; run setup again later",
                ACTIVE_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// The KMS key and the secret: checked with the run-time actions (`kms:DescribeKey`,
/// `secretsmanager:DescribeSecret`), never created. One line each; a missing one
/// comes with the `aws` commands that create it.
pub async fn other_resources(settings: impl Into<AwsSettings>) -> Vec<String> {
    let settings: AwsSettings = settings.into();
    let settings = &settings;
    let config: SdkConfig = crate::aws::sdk_config(settings.clone()).await;
    let region = crate::aws::region_name(&config);
    let mut lines = Vec::new();

    let key_id = &settings.kms_key_id;
    let kms = aws_sdk_kms::Client::new(&config);
    match observe(
        "kms",
        "DescribeKey",
        kms.describe_key().key_id(key_id).send().await,
    ) {
        Ok(out) => lines.push(format!(
            "KMS key {key_id}: present ({})",
            out.key_metadata().map_or("?", |m| m.arn().unwrap_or("?"))
        )),
        Err(f) if f.kind == FailureKind::NotFound => {
            let alias = if key_id.starts_with("alias/") {
                key_id.as_str()
            } else {
                "alias/axnt-oauth"
            };
            lines.push(format!(
                "KMS key {key_id}: not found in region {region}. Create it (setup does not):\n    \
                 KEY_ID=$(aws kms create-key --region {region} --description 'axnt-oauth token envelopes' \
                 --key-spec SYMMETRIC_DEFAULT --key-usage ENCRYPT_DECRYPT --query KeyMetadata.KeyId --output text)\n    \
                 aws kms create-alias --region {region} --alias-name {alias} --target-key-id \"$KEY_ID\"\n    \
                 aws kms enable-key-rotation --region {region} --key-id \"$KEY_ID\""
            ));
        }
        Err(f) => lines.push(format!(
            "KMS key {key_id}: could not check ({})",
            f.describe()
        )),
    }

    let secret_id = &settings.secret_id;
    let secrets = aws_sdk_secretsmanager::Client::new(&config);
    match observe(
        "secretsmanager",
        "DescribeSecret",
        secrets.describe_secret().secret_id(secret_id).send().await,
    ) {
        Ok(_) => lines.push(format!("secret {secret_id}: present")),
        Err(f) if f.kind == FailureKind::NotFound => lines.push(format!(
            "secret {secret_id}: not found in region {region}. Create it (setup does not):\n    \
             aws secretsmanager create-secret --region {region} --name {secret_id} \
             --secret-string file://google-oauth.json\n    \
             (google-oauth.json: {{\"client_id\": \"…\", \"client_secret\": \"…\", \"state_key\": \"<openssl rand -base64 32>\"}} \
             or the file Google's console downloads)"
        )),
        Err(f) => lines.push(format!(
            "secret {secret_id}: could not check ({})",
            f.describe()
        )),
    }
    lines
}
