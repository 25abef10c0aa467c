//! `deploy/axnt-oauth.yaml` as an operator deploys it: the stack is created in moto's
//! CloudFormation, a secret value is stored, and the service's own `check` runs against
//! the stack's outputs. Also the one source of the run-time policy: the policy the stack
//! creates must be `deploy/iam-policy.json` with its placeholders filled in.
//!
//! moto (5.2.5) creates the tables (keys and billing), the key (with rotation), the
//! alias and the managed policy. It ignores `TimeToLiveSpecification` and
//! `PointInTimeRecoverySpecification`, and skips `AWS::SecretsManager::Secret` and
//! `AWS::CloudWatch::Alarm` (no resource, no output); so the secret is created here
//! under the stack's name when the stack has none. The template is deployed as it is;
//! `cfn-lint` (in `.ci/run`) checks what moto does not. The replica-region mode
//! (`AWS::DynamoDB::GlobalTable`, `AWS::KMS::ReplicaKey`) moto does not create at all,
//! and it cannot decrypt under a multi-Region key even in one region (its ciphertext
//! keeps 36 bytes of the 40-character `mrk-` key id): `cfn-lint` covers the template,
//! and a unit test in src/crypto/kms.rs the naming of a replica key on Decrypt.

use std::collections::HashMap;
use std::process::{Command, Stdio};

use aws_sdk_dynamodb::types::{BillingMode, KeyType, ScalarAttributeType};
use base64::Engine;

use crate::support::FakeProvider;
use crate::support::aws::{
    AwsCredentials, moto_endpoint, sdk_pairs, secret_json, settings_from, unique,
};

const BIN: &str = env!("CARGO_BIN_EXE_axnt-oauth");
const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/axnt-oauth.yaml");
const POLICY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/iam-policy.json");

/// One call to a query-protocol AWS API (CloudFormation, IAM) on moto. moto checks no
/// signature; the Authorization header's credential scope tells it the service and
/// region.
async fn query(endpoint: &str, service: &str, version: &str, params: &[(&str, &str)]) -> String {
    let region = sdk_region();
    let mut form = vec![("Version", version)];
    form.extend_from_slice(params);
    let response = reqwest::Client::new()
        .post(format!("{endpoint}/"))
        .header(
            "Authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential=testing/20250101/{region}/{service}/aws4_request, \
                 SignedHeaders=host, Signature=00"
            ),
        )
        .form(&form)
        .send()
        .await
        .unwrap_or_else(|e| panic!("moto {service} call: {e}"));
    let status = response.status();
    let body = response.text().await.expect("moto body");
    assert!(
        status.is_success(),
        "moto {service} {params:?}: {status} {body}"
    );
    body
}

fn sdk_region() -> String {
    std::env::var("AWS_REGION")
        .ok()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "us-east-1".into())
}

/// The text of the first `<tag>` in `xml`, entities decoded.
fn tag(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(
        xml[start..end]
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// A stack's outputs from a DescribeStacks answer.
fn outputs(described: &str) -> HashMap<String, String> {
    let Some(section) = tag(described, "Outputs") else {
        return HashMap::new();
    };
    section
        .split("<member>")
        .filter_map(|m| Some((tag(m, "OutputKey")?, tag(m, "OutputValue")?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_template_creates_what_check_needs_and_the_policy_file_grants() {
    let endpoint = moto_endpoint();
    let region = sdk_region();
    let tokens_table = unique("axnt-deploy-tokens");
    let logs_table = unique("axnt-deploy-logs");
    let events_table = unique("axnt-deploy-events");
    let alias = format!("alias/{}", unique("axnt-deploy"));
    let secret_name = unique("axnt-deploy/google-oauth");
    let stack = unique("axnt-deploy");
    let template = std::fs::read_to_string(TEMPLATE).expect("deploy/axnt-oauth.yaml");

    let parameters = [
        ("TokensTableName", tokens_table.as_str()),
        ("LogsTableName", logs_table.as_str()),
        ("EventsTableName", events_table.as_str()),
        ("KeyAliasName", alias.as_str()),
        ("SecretName", secret_name.as_str()),
    ];
    let mut params = vec![
        ("Action".to_string(), "CreateStack".to_string()),
        ("StackName".into(), stack.clone()),
        ("TemplateBody".into(), template),
    ];
    for (i, (key, value)) in parameters.iter().enumerate() {
        params.push((
            format!("Parameters.member.{}.ParameterKey", i + 1),
            (*key).into(),
        ));
        params.push((
            format!("Parameters.member.{}.ParameterValue", i + 1),
            (*value).into(),
        ));
    }
    let params: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    query(&endpoint, "cloudformation", "2010-05-15", &params).await;
    let described = query(
        &endpoint,
        "cloudformation",
        "2010-05-15",
        &[("Action", "DescribeStacks"), ("StackName", &stack)],
    )
    .await;
    assert_eq!(
        tag(&described, "StackStatus").as_deref(),
        Some("CREATE_COMPLETE"),
        "{described}"
    );
    let out = outputs(&described);
    assert_eq!(out.get("TokensTableName"), Some(&tokens_table));
    assert_eq!(out.get("LogsTableName"), Some(&logs_table));
    assert_eq!(out.get("KeyAlias"), Some(&alias));
    let key_arn = out.get("KeyArn").expect("KeyArn output").clone();
    let policy_arn = out.get("PolicyArn").expect("PolicyArn output").clone();

    // The service's environment, as the stack states it.
    let service_env: Vec<(String, String)> = out
        .get("ServiceEnvironment")
        .expect("ServiceEnvironment output")
        .split(' ')
        .map(|pair| {
            let (name, value) = pair.split_once('=').expect("NAME=value");
            (name.to_string(), value.to_string())
        })
        .collect();
    let env_of = |name: &str| {
        service_env
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(env_of("AXNT_BACKEND"), Some("aws"));
    assert_eq!(env_of("AWS_REGION"), Some(region.as_str()));
    assert_eq!(env_of("AXNT_KMS_KEY_ID"), Some(alias.as_str()));
    assert_eq!(env_of("AXNT_GOOGLE_SECRET_ID"), Some(secret_name.as_str()));

    // Tables with the key schemas and billing `setup` creates; the key rotates.
    let credentials = AwsCredentials::from_env();
    let mut sdk_env = sdk_pairs(&endpoint, &credentials);
    sdk_env.extend(service_env.iter().cloned());
    let config = axnt_oauth::aws::sdk_config(&settings_from(&sdk_env)).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    for (table, hash, range) in [
        (&tokens_table, "userId", "provider"),
        (&logs_table, "userId", "timestamp"),
        (&events_table, "day", "id"),
    ] {
        let described = dynamodb
            .describe_table()
            .table_name(table)
            .send()
            .await
            .expect("DescribeTable")
            .table
            .expect("table");
        let mut keys: Vec<(String, KeyType)> = described
            .key_schema()
            .iter()
            .map(|k| (k.attribute_name().to_string(), k.key_type().clone()))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        let mut wanted = vec![
            (hash.to_string(), KeyType::Hash),
            (range.to_string(), KeyType::Range),
        ];
        wanted.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(keys, wanted, "{table}'s key schema");
        assert!(
            described
                .attribute_definitions()
                .iter()
                .all(|a| *a.attribute_type() == ScalarAttributeType::S),
            "{table}'s keys are strings"
        );
        assert_eq!(
            described
                .billing_mode_summary()
                .and_then(|b| b.billing_mode()),
            Some(&BillingMode::PayPerRequest),
            "{table} is on-demand"
        );
    }
    let kms = aws_sdk_kms::Client::new(&config);
    let key = kms
        .describe_key()
        .key_id(&alias)
        .send()
        .await
        .expect("DescribeKey through the alias");
    assert_eq!(
        key.key_metadata().and_then(|m| m.arn()),
        Some(key_arn.as_str())
    );
    let rotation = kms
        .get_key_rotation_status()
        .key_id(&key_arn)
        .send()
        .await
        .expect("GetKeyRotationStatus");
    assert!(rotation.key_rotation_enabled(), "the key rotates");

    // One policy: the stack's is deploy/iam-policy.json with its placeholders filled.
    let account = key_arn.split(':').nth(4).expect("account in the key ARN");
    let key_id = key_arn.rsplit('/').next().expect("key id in the key ARN");
    let expected = std::fs::read_to_string(POLICY)
        .expect("deploy/iam-policy.json")
        .replace("YOUR_REGION", &region)
        .replace("YOUR_ACCOUNT_ID", account)
        .replace("YOUR_KEY_ID", key_id)
        .replace(
            "secret:axnt/google-oauth*\"",
            &format!("secret:{secret_name}*\""),
        )
        .replace("alias/axnt-oauth\"", &format!("{alias}\""))
        .replace(
            "table/axnt-oauth-tokens-logs\"",
            &format!("table/{logs_table}\""),
        )
        .replace(
            "table/axnt-oauth-tokens-events\"",
            &format!("table/{events_table}\""),
        )
        .replace(
            "table/axnt-oauth-tokens\"",
            &format!("table/{tokens_table}\""),
        );
    let expected: serde_json::Value = serde_json::from_str(&expected).expect("policy JSON");
    let version = query(
        &endpoint,
        "iam",
        "2010-05-08",
        &[("Action", "GetPolicy"), ("PolicyArn", &policy_arn)],
    )
    .await;
    let version_id = tag(&version, "DefaultVersionId").expect("DefaultVersionId");
    let document = query(
        &endpoint,
        "iam",
        "2010-05-08",
        &[
            ("Action", "GetPolicyVersion"),
            ("PolicyArn", &policy_arn),
            ("VersionId", &version_id),
        ],
    )
    .await;
    let document = tag(&document, "Document").expect("Document");
    // Real IAM URL-encodes the document; moto sends it as it is.
    let document = if document.starts_with('%') {
        url::form_urlencoded::parse(format!("d={document}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .expect("decoded")
    } else {
        document
    };
    let deployed: serde_json::Value =
        serde_json::from_str(&document).expect("deployed policy JSON");
    assert_eq!(
        deployed, expected,
        "deploy/axnt-oauth.yaml's ServicePolicy and deploy/iam-policy.json have drifted apart: change both"
    );

    // The operator stores the client credentials (moto made no secret: create it).
    let provider = FakeProvider::start().await;
    let mut state = [0u8; 32];
    axnt_oauth::crypto::fill_random(&mut state);
    let state_key = base64::engine::general_purpose::STANDARD.encode(state);
    let client_secret = provider.client_secret();
    let document = secret_json(
        &provider.client_id(),
        &client_secret,
        &state_key,
        "deploy-test-api-key-0123456789",
    );
    let secrets = aws_sdk_secretsmanager::Client::new(&config);
    match out.get("SecretArn") {
        Some(arn) => {
            secrets
                .put_secret_value()
                .secret_id(arn)
                .secret_string(&document)
                .send()
                .await
                .expect("PutSecretValue");
        }
        None => {
            secrets
                .create_secret()
                .name(&secret_name)
                .secret_string(&document)
                .send()
                .await
                .expect("CreateSecret");
        }
    }

    // `check` with the stack's environment and nothing else of ours.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut check = Command::new(BIN);
    check.current_dir(dir.path()).arg("check");
    for (name, _) in std::env::vars() {
        if name.starts_with("AXNT_") || name.starts_with("DYNAMODB_") || name.starts_with("AWS_") {
            check.env_remove(name);
        }
    }
    check
        .envs(service_env.iter().cloned())
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_ACCESS_KEY_ID", &credentials.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &credentials.secret_access_key)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AXNT_GOOGLE_ISSUER", provider.issuer())
        .stdin(Stdio::null());
    let ran = tokio::task::spawn_blocking(move || check.output())
        .await
        .expect("join")
        .expect("run check");
    let stdout = String::from_utf8_lossy(&ran.stdout);
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(ran.status.success(), "check failed:\n{stdout}\n{stderr}");
    for line in [
        "ok    secret",
        "ok    key round trip",
        "ok    tokens table",
        "ok    logs table",
        "ok    provider discovery",
    ] {
        assert!(stdout.contains(line), "{line} in:\n{stdout}");
    }
    assert!(
        !stdout.contains(&client_secret) && !stderr.contains(&client_secret),
        "the client secret is never printed"
    );
}
