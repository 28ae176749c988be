//! The federation keypair: generated once, persisted with owner-only
//! permissions, never logged. Tokens are minted here.

use anyhow::{bail, Context as _, Result};
use ed25519_dalek::SigningKey;
use multicloud_core::pem;
use multicloud_core::token::{self, Audience, Claims, Scope};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

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
}
