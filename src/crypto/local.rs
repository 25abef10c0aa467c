//! Embedded mode's key provider: a 256-bit master key in a file created with mode 0600.
//!
//! Data keys are wrapped with AES-256-GCM under the master key. The envelope's `keyId`
//! is `local:<fingerprint>`, so a row sealed under another master key is reported as
//! such instead of as a corrupt ciphertext.

use std::io::Write;
use std::path::Path;

use async_trait::async_trait;

use super::{CryptoError, DataKey, KeyProvider, SecretKey};

const WRAP_AAD: &[u8] = b"axnt-oauth/data-key/v1";

pub(crate) struct LocalKeyProvider {
    master: SecretKey,
    key_id: String,
}

impl LocalKeyProvider {
    pub(crate) fn new(master: SecretKey) -> Self {
        let key_id = format!("local:{}", master.fingerprint());
        Self { master, key_id }
    }

    /// Reads the master key file, creating it (mode 0600) when absent.
    /// Returns the provider and whether the file was created now.
    pub(crate) fn load_or_create(path: &Path) -> Result<(Self, bool), CryptoError> {
        let (key, created) = load_or_create_key_file(path)?;
        Ok((Self::new(key), created))
    }
}

/// Reads a base64 key file, or creates one with a fresh key and mode 0600.
/// Returns the key and whether the file was created by this call.
pub(crate) fn load_or_create_key_file(path: &Path) -> Result<(SecretKey, bool), CryptoError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = SecretKey::from_base64(&text)
                .map_err(|e| CryptoError::InvalidKey(format!("{}: {e}", path.display())))?;
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::generate();
            write_private_file(path, key.to_base64().as_bytes()).map_err(|e| {
                CryptoError::InvalidKey(format!("cannot create {}: {e}", path.display()))
            })?;
            Ok((key, true))
        }
        Err(e) => Err(CryptoError::InvalidKey(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Creates `path` with mode 0600 (owner read/write only), failing if it exists, so a
/// concurrent creator cannot be overwritten.
pub(crate) fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[async_trait]
impl KeyProvider for LocalKeyProvider {
    #[tracing::instrument(skip_all, fields(key_id = %self.key_id))]
    async fn generate_data_key(&self) -> Result<DataKey, CryptoError> {
        let plaintext = SecretKey::generate();
        let encrypted = self.master.seal_combined(WRAP_AAD, plaintext.expose())?;
        Ok(DataKey {
            plaintext,
            encrypted,
            key_id: self.key_id.clone(),
        })
    }

    #[tracing::instrument(skip_all, fields(key_id = %key_id))]
    async fn decrypt_data_key(
        &self,
        key_id: &str,
        encrypted: &[u8],
    ) -> Result<SecretKey, CryptoError> {
        if key_id != self.key_id {
            return Err(CryptoError::Rejected(format!(
                "sealed under {key_id}, but this instance's master key is {}",
                self.key_id
            )));
        }
        let bytes = self.master.open_combined(WRAP_AAD, encrypted)?;
        SecretKey::from_slice(&bytes)
    }

    fn describe(&self) -> String {
        format!("local master key {}", self.key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.key");
        let (first, created) = load_or_create_key_file(&path).expect("create");
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let (again, created) = load_or_create_key_file(&path).expect("reload");
        assert!(!created);
        assert_eq!(first.expose(), again.expose());
    }

    #[tokio::test]
    async fn data_keys_unwrap_only_under_their_master() {
        let a = LocalKeyProvider::new(SecretKey::generate());
        let b = LocalKeyProvider::new(SecretKey::generate());
        let dk = a.generate_data_key().await.expect("generate");
        let back = a
            .decrypt_data_key(&dk.key_id, &dk.encrypted)
            .await
            .expect("unwrap");
        assert_eq!(back.expose(), dk.plaintext.expose());
        assert!(b.decrypt_data_key(&dk.key_id, &dk.encrypted).await.is_err());
    }
}
