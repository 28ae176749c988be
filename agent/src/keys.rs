//! The federation keypair: generated once, persisted with owner-only
//! permissions, never logged. Tokens are minted here.
//!
//! A key rotation has three steps, each a `multicloud-agent rotate-key`
//! command (docs/operator-guide.md, "Rotate keys"): `stage` generates the
//! next key, which is published beside the signing key; `promote` signs
//! with it and keeps the old key published as the previous one; `finish`
//! stops publishing the previous key. Peers accept tokens of any published
//! key, so no fetch fails. The [`KeyRing`] is what is in force; files (the
//! standalone agent) and the Secret (`crate::kube::key_secret`) hold it.

use anyhow::{bail, Context as _, Result};
use ed25519_dalek::SigningKey;
use multicloud_core::pem;
use multicloud_core::token::{self, Audience, Claims, Scope};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The issuer this project writes into its tokens.
pub const ISSUER: &str = "istio-multicloud";
/// The longest lifetime the agent will sign for a metadata token.
pub const MAX_METADATA_TOKEN_TTL_SECS: i64 = 60;

/// Loads the key at `path`, or generates and stores a new one (mode 0600).
/// Refuses a key file that others can read.
pub fn load_or_generate(path: &Path) -> Result<SigningKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                bail!("federation key {} is readable by group or others (mode {:o}); run chmod 600 on it", path.display(), mode & 0o777);
            }
            pem::ed25519_signing_key_from_pem(&text)
                .with_context(|| format!("federation key {} is not a PKCS#8 Ed25519 private key", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand_core::OsRng);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create federation key file {}", path.display()))?;
            f.write_all(pem::ed25519_signing_key_to_pem(&key).as_bytes())?;
            f.sync_all()?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read federation key {}", path.display())),
    }
}

/// Loads an existing key (never generates one); same checks as [`load_or_generate`].
pub fn load_existing(path: &Path) -> Result<SigningKey> {
    if !path.exists() {
        bail!("federation key {} does not exist", path.display());
    }
    load_or_generate(path)
}

/// The federation keys in force: the signing key, and during a rotation
/// the staged next key or the retired previous one.
#[derive(Clone)]
pub struct KeyRing {
    pub current: SigningKey,
    pub next: Option<SigningKey>,
    pub previous: Option<SigningKey>,
}

impl KeyRing {
    pub fn new(current: SigningKey) -> KeyRing {
        KeyRing { current, next: None, previous: None }
    }

    /// `authnKeyPub`: the signing key's public half (PEM).
    pub fn current_pem(&self) -> String {
        pem::ed25519_public_key_to_pem(&self.current.verifying_key())
    }

    /// `additionalAuthnKeysPub`: the next key, then the previous one; a key
    /// equal to the signing one (a rotation caught between two writes) is
    /// left out.
    pub fn additional_pems(&self) -> Vec<String> {
        [&self.next, &self.previous]
            .into_iter()
            .flatten()
            .filter(|k| k.verifying_key() != self.current.verifying_key())
            .map(|k| pem::ed25519_public_key_to_pem(&k.verifying_key()))
            .collect()
    }

    /// Which step the rotation is at.
    pub fn stage(&self) -> RotationStage {
        match (&self.next, &self.previous) {
            (None, None) => RotationStage::Idle,
            (Some(_), None) => RotationStage::Staged,
            (None, Some(_)) => RotationStage::Promoted,
            (Some(_), Some(_)) => RotationStage::Inconsistent,
        }
    }
}

/// A ring that never changes (no rotation source): `key` alone.
pub fn fixed(key: SigningKey) -> tokio::sync::watch::Receiver<KeyRing> {
    tokio::sync::watch::channel(KeyRing::new(key)).1
}

/// Where a key rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationStage {
    /// One key.
    Idle,
    /// A next key is published beside the signing key.
    Staged,
    /// The signing key is the new one; the previous one is still published.
    Promoted,
    /// Both a next and a previous key: a store edited by hand.
    Inconsistent,
}

/// One step of `multicloud-agent rotate-key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RotationStep {
    /// Generate the next key; it is published beside the signing key.
    Stage,
    /// Sign with the next key; the old one stays published as the previous key.
    Promote,
    /// Stop publishing the previous key.
    Finish,
}

/// Applies `step` to `ring`, whose last change was `since` ago. `min_wait`
/// is the least time the step before must have been in force: peers must
/// have read a staged key before it signs (their public refresh), and the
/// previous key's tokens must have expired before it goes. Errors say what
/// to run instead.
pub fn rotate(ring: &KeyRing, step: RotationStep, since: Duration, min_wait: Duration) -> Result<KeyRing> {
    let wait = |what: &str| {
        if since < min_wait {
            bail!(
                "{what} {}s ago; wait {}s more so that {} (or pass --min-wait-seconds)",
                since.as_secs(),
                (min_wait - since).as_secs() + 1,
                if step == RotationStep::Promote {
                    "every peer has read the next key (they refresh public.json every 30 s)"
                } else {
                    "no token signed with the previous key is still in use"
                }
            );
        }
        Ok(())
    };
    match (step, ring.stage()) {
        (_, RotationStage::Inconsistent) => {
            bail!("the key store holds both a next and a previous key; remove one by hand (the previous one, if `promote` ran)")
        }
        (RotationStep::Stage, RotationStage::Idle) => {
            Ok(KeyRing { next: Some(SigningKey::generate(&mut rand_core::OsRng)), ..ring.clone() })
        }
        (RotationStep::Stage, RotationStage::Staged) => bail!("a next key is already staged; run `rotate-key promote`"),
        (RotationStep::Stage, RotationStage::Promoted) => bail!("the previous key is still published; run `rotate-key finish` first"),
        (RotationStep::Promote, RotationStage::Staged) => {
            wait("the next key was staged")?;
            Ok(KeyRing {
                current: ring.next.clone().unwrap_or_else(|| ring.current.clone()),
                next: None,
                previous: Some(ring.current.clone()),
            })
        }
        (RotationStep::Promote, RotationStage::Idle) => bail!("no next key is staged; run `rotate-key stage` first"),
        (RotationStep::Promote, RotationStage::Promoted) => bail!("already promoted; run `rotate-key finish`"),
        (RotationStep::Finish, RotationStage::Promoted) => {
            wait("the key was promoted")?;
            Ok(KeyRing::new(ring.current.clone()))
        }
        (RotationStep::Finish, RotationStage::Idle) => bail!("no rotation is under way"),
        (RotationStep::Finish, RotationStage::Staged) => bail!("the next key is staged, not promoted; run `rotate-key promote`"),
    }
}

/// The files of a standalone agent's key ring: `PATH` (the signing key),
/// `PATH.next`, `PATH.previous`, each mode 0600.
pub struct KeyFiles {
    pub current: PathBuf,
}

impl KeyFiles {
    pub fn new(current: &Path) -> KeyFiles {
        KeyFiles { current: current.to_path_buf() }
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self.current.as_os_str().to_os_string();
        name.push(suffix);
        PathBuf::from(name)
    }

    pub fn next_path(&self) -> PathBuf {
        self.sibling(".next")
    }

    pub fn previous_path(&self) -> PathBuf {
        self.sibling(".previous")
    }

    /// The ring on disk (the signing key generated if missing).
    pub fn load(&self) -> Result<KeyRing> {
        let optional = |p: PathBuf| if p.exists() { load_existing(&p).map(Some) } else { Ok(None) };
        Ok(KeyRing {
            current: load_or_generate(&self.current)?,
            next: optional(self.next_path())?,
            previous: optional(self.previous_path())?,
        })
    }

    /// How long ago the ring last changed (the newest file's mtime).
    pub fn since_last_change(&self) -> Duration {
        [self.current.clone(), self.next_path(), self.previous_path()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .max()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default()
    }

    /// Writes `ring` so that a reader never sees a published key vanish:
    /// the previous key is written before the signing key is replaced, and
    /// the next key removed after.
    pub fn store(&self, ring: &KeyRing) -> Result<()> {
        match &ring.previous {
            Some(k) => write_key(&self.previous_path(), k)?,
            None => remove_if_present(&self.previous_path())?,
        }
        write_key(&self.current, &ring.current)?;
        match &ring.next {
            Some(k) => write_key(&self.next_path(), k)?,
            None => remove_if_present(&self.next_path())?,
        }
        Ok(())
    }
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        _ => Ok(()),
    }
}

/// Writes `key` to `path` (mode 0600) through a temporary file and a rename;
/// an unchanged file is left alone (its mtime dates the step).
fn write_key(path: &Path, key: &SigningKey) -> Result<()> {
    let text = pem::ed25519_signing_key_to_pem(key);
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    write_private_file(path, text.as_bytes())
}

/// Writes `bytes` to `path` readable by the owner only (0600), through
/// `PATH.tmp` and a rename, so that a reader sees the old file or the new
/// one, never a part.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Keeps `tx` in step with the files: re-read every `every`; a file that
/// does not parse keeps the ring in force (and is logged, never its text).
pub async fn watch_files(files: KeyFiles, tx: tokio::sync::watch::Sender<KeyRing>, every: Duration) {
    let fingerprint = |r: &KeyRing| (r.current_pem(), r.additional_pems());
    let mut last_error = None;
    loop {
        tokio::time::sleep(every).await;
        if tx.is_closed() {
            return;
        }
        match files.load() {
            Ok(ring) => {
                last_error = None;
                if fingerprint(&ring) != fingerprint(&tx.borrow()) {
                    tracing::info!(stage = ?ring.stage(), "federation key ring changed: publishing and signing with it");
                    let _ = tx.send(ring);
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if last_error.as_ref() != Some(&msg) {
                    tracing::error!("federation key files unreadable, keeping the keys in force: {msg}");
                    last_error = Some(msg);
                }
            }
        }
    }
}

/// Mints a token from `local` (sub) for `remote` (aud).
pub fn mint(key: &SigningKey, local_uuid: &str, remote_uuid: &str, scope: Scope, now: i64, ttl_secs: i64) -> String {
    token::sign(
        key,
        &Claims {
            iss: ISSUER.into(),
            sub: local_uuid.into(),
            aud: Audience::One(remote_uuid.into()),
            scope: scope.as_str().into(),
            nbf: now,
            exp: now + ttl_secs,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_generated_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("federation.key");
        let k1 = load_or_generate(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let k2 = load_or_generate(&path).unwrap();
        assert_eq!(k1.as_bytes(), k2.as_bytes());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_generate(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_rotation_on_files_stages_promotes_and_finishes_and_each_step_refuses_out_of_turn() {
        let dir = tempfile::tempdir().unwrap();
        let files = KeyFiles::new(&dir.path().join("federation.key"));
        let first = files.load().unwrap();
        let (now, long_ago) = (Duration::ZERO, Duration::from_secs(3600));
        let err = |r: Result<KeyRing>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(rotate(&first, RotationStep::Promote, long_ago, now)).contains("run `rotate-key stage` first"));
        assert!(err(rotate(&first, RotationStep::Finish, long_ago, now)).contains("no rotation is under way"));

        let staged = rotate(&first, RotationStep::Stage, now, now).unwrap();
        files.store(&staged).unwrap();
        let staged = files.load().unwrap();
        assert_eq!(staged.stage(), RotationStage::Staged);
        assert_eq!(staged.current_pem(), first.current_pem(), "the signing key stays until promote");
        let next = staged.additional_pems();
        assert_eq!(next.len(), 1);
        assert_eq!(std::fs::metadata(files.next_path()).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(err(rotate(&staged, RotationStep::Stage, long_ago, now)).contains("already staged"));
        // Too soon: the peers may not have read the next key yet.
        let soon = err(rotate(&staged, RotationStep::Promote, Duration::from_secs(10), Duration::from_secs(90)));
        assert!(soon.contains("10s ago; wait 81s more") && soon.contains("every peer has read the next key"), "{soon}");

        let promoted = rotate(&staged, RotationStep::Promote, long_ago, Duration::from_secs(90)).unwrap();
        files.store(&promoted).unwrap();
        let promoted = files.load().unwrap();
        assert_eq!(promoted.stage(), RotationStage::Promoted);
        assert_eq!(vec![promoted.current_pem()], next, "the next key signs");
        assert_eq!(promoted.additional_pems(), vec![first.current_pem()], "the old key stays published");
        assert!(!files.next_path().exists());
        assert!(files.since_last_change() < Duration::from_secs(60));
        assert!(err(rotate(&promoted, RotationStep::Finish, Duration::from_secs(5), Duration::from_secs(660))).contains("still in use"));

        let done = rotate(&promoted, RotationStep::Finish, long_ago, Duration::from_secs(660)).unwrap();
        files.store(&done).unwrap();
        let done = files.load().unwrap();
        assert_eq!((done.stage(), done.current_pem(), done.additional_pems()), (RotationStage::Idle, next[0].clone(), vec![]));
        assert!(!files.previous_path().exists());
    }

    #[test]
    fn a_ring_caught_between_two_writes_never_publishes_the_signing_key_twice() {
        let (a, b) = (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]));
        let ring = KeyRing { current: a.clone(), next: Some(b.clone()), previous: Some(a.clone()) };
        assert_eq!(ring.stage(), RotationStage::Inconsistent);
        assert_eq!(ring.additional_pems(), vec![pem::ed25519_public_key_to_pem(&b.verifying_key())]);
        assert!(rotate(&ring, RotationStep::Promote, Duration::from_secs(999), Duration::ZERO).is_err());
    }
}
