//! Server secrets: generated on first start into the data dir (mode 0600), never compiled in,
//! so two installations never share one. A configured value (flag, env, file) wins, which is
//! how several instances share a key.

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nextsync_core::secret::Secret;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The name of the JWT signing key file inside the data dir.
pub const JWT_KEY_FILE: &str = "jwt-signing.key";
/// The key sealing NextChat secrets (API keys) of accounts that sync them.
pub const NEXTCHAT_KEY_FILE: &str = "nextchat-secrets.key";

/// Creates the data dir (mode 0700) if it does not exist yet.
pub fn ensure_data_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting data dir {}", dir.display()))?;
    }
    Ok(())
}

/// Reads `<dir>/<name>`, or creates it with `len` fresh random bytes (base64) if absent.
/// Creation is exclusive, so two processes starting at once end up with the same key.
pub fn load_or_generate(dir: &Path, name: &str, len: usize) -> anyhow::Result<Secret> {
    let path = dir.join(name);
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let fresh = STANDARD.encode(&bytes);
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            file.write_all(fresh.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "generated a new secret");
            Ok(Secret::new(fresh))
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let mode = fs::metadata(&path)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "secret file is readable by others; chmod 600 it");
            }
            let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let text = text.trim();
            anyhow::ensure!(
                !text.is_empty(),
                "{} is empty; delete it to generate a new one",
                path.display()
            );
            Ok(Secret::new(text))
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_secret_is_private_stable_and_unique_per_install() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        let first = load_or_generate(a.path(), JWT_KEY_FILE, 64).expect("generate");
        let again = load_or_generate(a.path(), JWT_KEY_FILE, 64).expect("reload");
        let other = load_or_generate(b.path(), JWT_KEY_FILE, 64).expect("generate");
        assert_eq!(first, again);
        assert_ne!(first, other);
        let mode = fs::metadata(a.path().join(JWT_KEY_FILE))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
