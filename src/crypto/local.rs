//! Embedded mode's key provider: 256-bit master keys in files created with mode 0600.
//!
//! Data keys are wrapped with AES-256-GCM under a master key. The envelope's `keyId`
//! is `local:<fingerprint>`, so the key that opens a row is found by name, and a row
//! sealed under a key this instance does not have is reported as such instead of as a
//! corrupt ciphertext.
//!
//! Key rotation keeps every key a row may name: `master.key` in the data directory is
//! the current key (new data keys are wrapped under it) and `master-keys/<fingerprint>.key`
//! holds retired ones, still opened by fingerprint. [`rotate_master_key`] retires the
//! current key there before it puts a new one in place, so a key is never missing from
//! both. A running instance notices a new `master.key` (its file changed) when it next
//! generates a data key, and re-reads the files once when it meets a fingerprint it does
//! not know, so rows re-wrapped by `axnt-oauth rotate-keys` while it runs stay readable.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use parking_lot::RwLock;

use super::{CryptoError, DataKey, KeyProvider, SecretKey, WrappedKey};

const WRAP_AAD: &[u8] = b"axnt-oauth/data-key/v1";

/// The current master key's file name in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";
/// The directory, beside [`MASTER_KEY_FILE`], of retired master keys
/// (`<fingerprint>.key`).
pub const RETIRED_KEYS_DIR: &str = "master-keys";

/// The keys one provider can open with, by `keyId`, and the one it wraps with.
struct KeyRing {
    current_id: String,
    keys: HashMap<String, SecretKey>,
    /// What `master.key` looked like when read, to notice a rotation.
    stamp: Option<FileStamp>,
}

impl KeyRing {
    fn single(master: SecretKey) -> Self {
        let current_id = key_id(&master);
        Self {
            keys: HashMap::from([(current_id.clone(), master)]),
            current_id,
            stamp: None,
        }
    }

    fn current(&self) -> Option<&SecretKey> {
        self.keys.get(&self.current_id)
    }
}

fn key_id(key: &SecretKey) -> String {
    format!("local:{}", key.fingerprint())
}

/// A file's identity and version as `stat` sees it: a rename over it (how
/// [`rotate_master_key`] installs a key) changes the inode and the time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> std::io::Result<FileStamp> {
    let meta = std::fs::metadata(path)?;
    #[cfg(unix)]
    let inode = {
        use std::os::unix::fs::MetadataExt;
        meta.ino()
    };
    #[cfg(not(unix))]
    let inode = 0;
    Ok(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

pub(crate) struct LocalKeyProvider {
    ring: RwLock<KeyRing>,
    /// `master.key`, when the keys come from files (re-read after a rotation).
    master_path: Option<PathBuf>,
}

impl LocalKeyProvider {
    /// One master key held in memory only (tests, fuzzing, benchmarks).
    #[cfg(any(test, fuzzing, feature = "bench"))]
    pub(crate) fn new(master: SecretKey) -> Self {
        Self {
            ring: RwLock::new(KeyRing::single(master)),
            master_path: None,
        }
    }

    /// Reads the master key file, creating it (mode 0600) when absent, and the retired
    /// keys beside it. Returns the provider and whether the master key was created now.
    pub(crate) fn load_or_create(path: &Path) -> Result<(Self, bool), CryptoError> {
        let (_, created) = load_or_create_key_file(path)?;
        let ring = read_ring(path)?;
        Ok((
            Self {
                ring: RwLock::new(ring),
                master_path: Some(path.to_path_buf()),
            },
            created,
        ))
    }

    /// Re-reads the key files; on failure the keys already held stay in use.
    fn reload(&self) {
        let Some(path) = &self.master_path else {
            return;
        };
        match read_ring(path) {
            Ok(ring) => {
                let mut held = self.ring.write();
                if held.current_id != ring.current_id {
                    tracing::info!(key_id = %ring.current_id, "master key rotated: wrapping new data keys under it");
                }
                // Keys read before stay: a retired key file removed too early must not
                // make rows this instance could open unreadable.
                let mut keys = std::mem::take(&mut held.keys);
                keys.extend(ring.keys);
                *held = KeyRing { keys, ..ring };
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-reading the master key files failed; keeping the keys held")
            }
        }
    }

    /// Re-reads the key files when `master.key` changed since they were read (one
    /// `stat`; data keys are generated rarely, behind the data-key cache).
    fn reload_if_rotated(&self) {
        let Some(path) = &self.master_path else {
            return;
        };
        let now = stamp(path).ok();
        let held = self.ring.read().stamp.clone();
        if now.is_some() && now != held {
            self.reload();
        }
    }

    fn current(&self) -> Result<(String, SecretKey), CryptoError> {
        let ring = self.ring.read();
        let key = ring
            .current()
            .ok_or_else(|| CryptoError::InvalidKey("no current master key".into()))?;
        Ok((ring.current_id.clone(), key.clone()))
    }

    /// The key named `key_id`, re-reading the files once when it is not held.
    fn key_named(&self, key_id: &str) -> Result<SecretKey, CryptoError> {
        let find = || -> Result<Option<SecretKey>, CryptoError> {
            Ok(self.ring.read().keys.get(key_id).cloned())
        };
        if let Some(key) = find()? {
            return Ok(key);
        }
        if !key_id.starts_with("local:") {
            return Err(CryptoError::Rejected(format!(
                "sealed under {key_id}, not by a local master key"
            )));
        }
        self.reload();
        find()?.ok_or_else(|| {
            let current = self.ring.read().current_id.clone();
            CryptoError::Rejected(format!(
                "sealed under {key_id}, which is neither this instance's master key {current} \
                 nor a retired key in {RETIRED_KEYS_DIR}/"
            ))
        })
    }
}

/// The current key (`path`) and every retired key beside it.
fn read_ring(path: &Path) -> Result<KeyRing, CryptoError> {
    let stamp_before = stamp(path).ok();
    let master = read_key_file(path)?;
    let mut ring = KeyRing::single(master);
    ring.stamp = stamp_before;
    let dir = retired_dir(path);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ring),
        Err(e) => {
            return Err(CryptoError::InvalidKey(format!(
                "cannot read {}: {e}",
                dir.display()
            )));
        }
    };
    for entry in entries {
        let file = entry
            .map_err(|e| CryptoError::InvalidKey(format!("cannot read {}: {e}", dir.display())))?
            .path();
        if file.extension().is_some_and(|x| x == "key") {
            // A retired key that cannot be read costs only the rows sealed under it (they
            // fail to open, naming the key); it must not stop every other row's service.
            match read_key_file(&file) {
                Ok(key) => {
                    ring.keys.insert(key_id(&key), key);
                }
                Err(e) => tracing::error!(
                    file = %file.display(),
                    error = %e,
                    "a retired master key is unreadable: rows sealed under it cannot be opened"
                ),
            }
        }
    }
    Ok(ring)
}

fn retired_dir(master_path: &Path) -> PathBuf {
    master_path.with_file_name(RETIRED_KEYS_DIR)
}

/// Reads a base64 key file; errors name the file, never its contents.
fn read_key_file(path: &Path) -> Result<SecretKey, CryptoError> {
    let text =
        zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            CryptoError::InvalidKey(format!("cannot read {}: {e}", path.display()))
        })?);
    SecretKey::from_base64(&text)
        .map_err(|e| CryptoError::InvalidKey(format!("{}: {e}", path.display())))
}

/// Retires the master key at `path` into `master-keys/<fingerprint>.key` (mode 0600,
/// kept readable) and puts a new one in its place. Returns the old and new key ids.
///
/// The old key is written (and synced) to its retired file before the new key replaces
/// `master.key` by an atomic rename, so a crash at any point leaves every key that a
/// row may name in one of the files.
pub fn rotate_master_key(path: &Path) -> Result<(String, String), CryptoError> {
    let old = read_key_file(path)?;
    let old_id = key_id(&old);
    let dir = retired_dir(path);
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(&dir)
        .map_err(|e| CryptoError::InvalidKey(format!("cannot create {}: {e}", dir.display())))?;
    let retired = dir.join(format!("{}.key", old.fingerprint()));
    match read_key_file(&retired) {
        Ok(kept) if kept.expose() == old.expose() => {}
        Ok(_) => {
            return Err(CryptoError::InvalidKey(format!(
                "{} holds another key than its name says",
                retired.display()
            )));
        }
        Err(_) => {
            // Written aside, then renamed: a crash never leaves a half-written `.key`.
            let staged = retired.with_extension("key.tmp");
            let _ = std::fs::remove_file(&staged);
            write_private_file(&staged, old.to_base64().as_bytes()).map_err(|e| {
                CryptoError::InvalidKey(format!("cannot write {}: {e}", staged.display()))
            })?;
            std::fs::rename(&staged, &retired).map_err(|e| {
                CryptoError::InvalidKey(format!("cannot move {} into place: {e}", staged.display()))
            })?;
        }
    }
    sync_dir(&dir);
    let new = SecretKey::generate();
    let staged = path.with_extension("key.new");
    let _ = std::fs::remove_file(&staged);
    write_private_file(&staged, new.to_base64().as_bytes())
        .map_err(|e| CryptoError::InvalidKey(format!("cannot write {}: {e}", staged.display())))?;
    std::fs::rename(&staged, path).map_err(|e| {
        CryptoError::InvalidKey(format!(
            "cannot move {} to {}: {e}",
            staged.display(),
            path.display()
        ))
    })?;
    if let Some(parent) = path.parent() {
        sync_dir(parent);
    }
    Ok((old_id, key_id(&new)))
}

/// Makes a directory's entries durable (best effort: not every platform can).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
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
    #[tracing::instrument(skip_all)]
    async fn generate_data_key(&self) -> Result<DataKey, CryptoError> {
        self.reload_if_rotated();
        let (key_id, master) = self.current()?;
        let plaintext = SecretKey::generate();
        let encrypted = master.seal_combined(WRAP_AAD, plaintext.expose())?;
        Ok(DataKey {
            plaintext,
            encrypted,
            key_id,
        })
    }

    #[tracing::instrument(skip_all, fields(key_id = %key_id))]
    async fn decrypt_data_key(
        &self,
        key_id: &str,
        encrypted: &[u8],
    ) -> Result<SecretKey, CryptoError> {
        let master = self.key_named(key_id)?;
        let bytes = master.open_combined(WRAP_AAD, encrypted)?;
        SecretKey::from_slice(&bytes)
    }

    async fn current_key_id(&self) -> Result<String, CryptoError> {
        self.reload_if_rotated();
        self.current().map(|(id, _)| id)
    }

    #[tracing::instrument(skip_all, fields(key_id = %key_id))]
    async fn rewrap_data_key(
        &self,
        key_id: &str,
        encrypted: &[u8],
    ) -> Result<WrappedKey, CryptoError> {
        let data_key = self.decrypt_data_key(key_id, encrypted).await?;
        let (current_id, master) = self.current()?;
        Ok(WrappedKey {
            encrypted: master.seal_combined(WRAP_AAD, data_key.expose())?,
            key_id: current_id,
        })
    }

    fn describe(&self) -> String {
        let r = self.ring.read();
        if r.keys.len() > 1 {
            format!(
                "local master key {} (+{} retired)",
                r.current_id,
                r.keys.len() - 1
            )
        } else {
            format!("local master key {}", r.current_id)
        }
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
    async fn a_rotated_master_key_keeps_old_data_keys_openable_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(MASTER_KEY_FILE);
        let (running, _) = LocalKeyProvider::load_or_create(&path).expect("create");
        let (reader, _) = LocalKeyProvider::load_or_create(&path).expect("load");
        let old = running.generate_data_key().await.expect("generate");
        let (old_id, new_id) = rotate_master_key(&path).expect("rotate");
        assert_eq!(old_id, old.key_id);
        assert_ne!(old_id, new_id);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let retired = dir
                .path()
                .join(RETIRED_KEYS_DIR)
                .join(format!("{}.key", old_id.trim_start_matches("local:")));
            let mode = std::fs::metadata(&retired)
                .expect("stat")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600);
        }
        // The running one notices the new master.key and seals under it from now on.
        assert_eq!(
            running.generate_data_key().await.expect("generate").key_id,
            new_id
        );
        // A fresh provider (the command) re-wraps under the new key.
        let (fresh, created) = LocalKeyProvider::load_or_create(&path).expect("reload");
        assert!(!created);
        assert_eq!(fresh.current_key_id().await.expect("current"), new_id);
        let rewrapped = fresh
            .rewrap_data_key(&old.key_id, &old.encrypted)
            .await
            .expect("rewrap");
        assert_eq!(rewrapped.key_id, new_id);
        // The running one opens both.
        for (id, edk) in [
            (&old.key_id, &old.encrypted),
            (&rewrapped.key_id, &rewrapped.encrypted),
        ] {
            let back = running.decrypt_data_key(id, edk).await.expect("open");
            assert_eq!(back.expose(), old.plaintext.expose());
        }
        // One that has not sealed since meets the new fingerprint and re-reads the files.
        let back = reader
            .decrypt_data_key(&rewrapped.key_id, &rewrapped.encrypted)
            .await
            .expect("open after re-reading the key files");
        assert_eq!(back.expose(), old.plaintext.expose());
        // With the retired key file gone, a new instance still opens re-wrapped keys.
        std::fs::remove_dir_all(dir.path().join(RETIRED_KEYS_DIR)).expect("remove retired");
        let (after, _) = LocalKeyProvider::load_or_create(&path).expect("reload");
        assert!(
            after
                .decrypt_data_key(&rewrapped.key_id, &rewrapped.encrypted)
                .await
                .is_ok()
        );
        assert!(matches!(
            after.decrypt_data_key(&old.key_id, &old.encrypted).await,
            Err(CryptoError::Rejected(_))
        ));
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
