//! aws mode's KMS against moto with the real SDK client: envelopes bound to their
//! context, errors that name the key and region, and the data-key cache's limits.

use std::sync::Arc;
use std::time::Duration;

use axnt_oauth::crypto::cache::{CacheLimits, CachingKeyProvider};
use axnt_oauth::crypto::kms::KmsKeyProvider;
use axnt_oauth::crypto::{CryptoError, EnvelopeCipher, KeyProvider};

use crate::support::aws::default_fixture;

fn limits(max_uses: u64, max_age: Duration, ttl: Duration) -> CacheLimits {
    CacheLimits {
        max_uses,
        max_age,
        decrypted_entries: 100,
        decrypted_ttl: ttl,
    }
}

#[tokio::test]
async fn kms_envelopes_are_bound_to_their_context_and_row() {
    let f = default_fixture().await;
    let config = f.sdk_config().await;
    let kms: Arc<dyn KeyProvider> = Arc::new(KmsKeyProvider::new(&config, &f.key_alias));
    let cipher = EnvelopeCipher::new(Arc::clone(&kms), f.tokens_table.clone());
    let envelope = cipher
        .seal("alice", "google", b"token set")
        .await
        .expect("seal");
    assert_eq!(
        envelope.key_id, f.key_arn,
        "the envelope names the key ARN KMS used, not the alias"
    );
    let opened = cipher
        .open("alice", "google", &envelope)
        .await
        .expect("open");
    assert_eq!(opened.as_slice(), b"token set");

    // Associated data: the same ciphertext on another row does not open.
    for (user, provider) in [("bob", "google"), ("alice", "github")] {
        assert!(
            matches!(
                cipher.open(user, provider, &envelope).await,
                Err(CryptoError::Integrity)
            ),
            "moved to {user}/{provider}"
        );
    }
    let other_table = EnvelopeCipher::new(Arc::clone(&kms), "another-table");
    assert!(
        other_table
            .open("alice", "google", &envelope)
            .await
            .is_err()
    );

    // Encryption context: a data key wrapped under ours does not unwrap under another.
    let edk = axnt_oauth::crypto::b64_decode(&envelope.edk).expect("edk is base64");
    // KMS itself is asked, through the SDK, with another context than the service's.
    let refused = aws_sdk_kms::Client::new(&config)
        .decrypt()
        .key_id(&envelope.key_id)
        .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(edk.clone()))
        .encryption_context("service", "axnt-oauth")
        .encryption_context("purpose", "something-else")
        .send()
        .await;
    assert!(refused.is_err(), "another context is refused by KMS");
    let accepted = aws_sdk_kms::Client::new(&config)
        .decrypt()
        .key_id(&envelope.key_id)
        .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(edk.clone()))
        .set_encryption_context(Some(
            axnt_oauth::crypto::kms::ENCRYPTION_CONTEXT
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        ))
        .send()
        .await;
    assert!(
        accepted.is_ok(),
        "the service's own context is accepted: {accepted:?}"
    );
    // An altered wrapped key is refused too.
    let mut flipped = edk.clone();
    if let Some(b) = flipped.last_mut() {
        *b ^= 1;
    }
    assert!(
        kms.decrypt_data_key(&envelope.key_id, &flipped)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn kms_errors_name_the_key_and_region() {
    let f = default_fixture().await;
    let config = f.sdk_config().await;
    let missing = KmsKeyProvider::new(&config, "alias/axnt-test-does-not-exist");
    let e = missing
        .generate_data_key()
        .await
        .err()
        .expect("no such key");
    let text = e.to_string();
    assert!(
        text.contains("alias/axnt-test-does-not-exist")
            && text.contains("not found in region us-east-1"),
        "{text}"
    );
}

#[tokio::test]
async fn the_data_key_cache_serves_repeated_reads() {
    let f = default_fixture().await;
    let config = f.sdk_config().await;
    let kms = Arc::new(KmsKeyProvider::new(&config, &f.key_alias));
    let cached: Arc<dyn KeyProvider> = Arc::new(CachingKeyProvider::new(
        kms.clone(),
        limits(3, Duration::from_secs(60), Duration::from_secs(60)),
    ));
    let cipher = EnvelopeCipher::new(cached, f.tokens_table.clone());
    let mut envelopes = Vec::new();
    for user in ["u1", "u2", "u3"] {
        envelopes.push((
            user,
            cipher
                .seal(user, "google", user.as_bytes())
                .await
                .expect("seal"),
        ));
    }
    assert_eq!(kms.calls(), 1, "three seals share one GenerateDataKey");
    assert_eq!(envelopes[0].1.edk, envelopes[2].1.edk, "one data key");
    assert_ne!(envelopes[0].1.iv, envelopes[1].1.iv, "never one nonce");
    for _ in 0..5 {
        for (user, env) in &envelopes {
            let opened = cipher.open(user, "google", env).await.expect("open");
            assert_eq!(opened.as_slice(), user.as_bytes());
        }
    }
    assert_eq!(kms.calls(), 1, "reads of our own writes cost no KMS call");
    let fourth = cipher.seal("u4", "google", b"u4").await.expect("seal");
    assert_eq!(
        kms.calls(),
        2,
        "the fourth seal needs a new data key (max 3 uses)"
    );
    assert_ne!(fourth.edk, envelopes[0].1.edk);

    // Another instance: one Decrypt per data key, then cached.
    let other_kms = Arc::new(KmsKeyProvider::new(&config, &f.key_alias));
    let other = EnvelopeCipher::new(
        Arc::new(CachingKeyProvider::new(
            other_kms.clone(),
            limits(3, Duration::from_secs(60), Duration::from_secs(60)),
        )),
        f.tokens_table.clone(),
    );
    for _ in 0..10 {
        for (user, env) in &envelopes {
            other
                .open(user, "google", env)
                .await
                .expect("open elsewhere");
        }
    }
    assert_eq!(
        other_kms.calls(),
        1,
        "one Decrypt serves every read of that data key"
    );
}

#[tokio::test]
async fn the_data_key_cache_honours_its_age_limits() {
    let f = default_fixture().await;
    let config = f.sdk_config().await;
    let kms = Arc::new(KmsKeyProvider::new(&config, &f.key_alias));
    let cipher = EnvelopeCipher::new(
        Arc::new(CachingKeyProvider::new(
            kms.clone(),
            limits(1000, Duration::from_millis(700), Duration::from_secs(60)),
        )),
        f.tokens_table.clone(),
    );
    cipher.seal("u", "google", b"x").await.expect("seal");
    cipher.seal("u", "google", b"x").await.expect("seal");
    assert_eq!(kms.calls(), 1);
    tokio::time::sleep(Duration::from_millis(900)).await;
    cipher.seal("u", "google", b"x").await.expect("seal");
    assert_eq!(
        kms.calls(),
        2,
        "a data key older than its max age is not reused"
    );

    let writer = EnvelopeCipher::new(
        Arc::new(KmsKeyProvider::new(&config, &f.key_alias)),
        f.tokens_table.clone(),
    );
    let env = writer.seal("u", "google", b"x").await.expect("seal");
    let reader_kms = Arc::new(KmsKeyProvider::new(&config, &f.key_alias));
    let reader = EnvelopeCipher::new(
        Arc::new(CachingKeyProvider::new(
            reader_kms.clone(),
            limits(1000, Duration::from_secs(60), Duration::from_millis(700)),
        )),
        f.tokens_table.clone(),
    );
    reader.open("u", "google", &env).await.expect("open");
    reader.open("u", "google", &env).await.expect("open");
    assert_eq!(reader_kms.calls(), 1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    reader.open("u", "google", &env).await.expect("open");
    assert_eq!(
        reader_kms.calls(),
        2,
        "a decrypted key is forgotten after its TTL"
    );
}
