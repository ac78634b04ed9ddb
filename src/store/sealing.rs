//! Channel credentials encrypted at rest.
//!
//! The secret fields of a channel's config (bot tokens, access tokens, app secrets, verify and
//! webhook tokens, signing secrets) are stored as `enc:v1:<hex>`: ChaCha20-Poly1305 with a random
//! 96-bit nonce, the channel id and field name as associated data (a ciphertext copied to another
//! channel or field does not open). Everything else in the config stays readable.
//!
//! The 256-bit key comes from `SWITCHBOARD_SECRET_KEY` (64 hex digits) or, when that is unset,
//! from `$DATA_DIR/secret.key`, created on first start with mode 0600. Several gateways on one
//! PostgreSQL must share the key (set the variable). A lost key means the channels must be
//! connected again; nothing else depends on it. Plaintext values written before encryption was
//! on are still read, and sealed the next time the channel is saved.

use std::path::Path;

use anyhow::Context;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;

const PREFIX: &str = "enc:v1:";

/// Seals and opens credentials with one key.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
    /// A second key derived from the same secret, for other purposes (widget visitor tokens).
    derived: [u8; 32],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> anyhow::Result<Sealer> {
        let key_bytes = key.as_slice();
        let key = UnboundKey::new(&CHACHA20_POLY1305, key)
            .map_err(|_| anyhow::anyhow!("the secret key is not a valid ChaCha20 key"))?;
        let derived = ring::digest::digest(
            &ring::digest::SHA256,
            &[b"switchboard derived key v1:".as_slice(), key_bytes].concat(),
        );
        let mut derived_key = [0u8; 32];
        derived_key.copy_from_slice(derived.as_ref());
        Ok(Sealer {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
            derived: derived_key,
        })
    }

    /// A key derived from the secret key (never the sealing key itself), for signing things
    /// that are not credentials, such as widget visitor tokens.
    pub fn derived_key(&self) -> &[u8; 32] {
        &self.derived
    }

    /// The key from `SWITCHBOARD_SECRET_KEY` (hex), or from (or into) `<data_dir>/secret.key`.
    /// Returns the sealer and where its key came from.
    pub fn load(from_env: Option<&str>, data_dir: &Path) -> anyhow::Result<(Sealer, String)> {
        if let Some(hex_key) = from_env {
            let bytes = hex::decode(hex_key.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .context("SWITCHBOARD_SECRET_KEY must be 64 hex digits (32 bytes)")?;
            return Ok((Sealer::new(&bytes)?, "SWITCHBOARD_SECRET_KEY".into()));
        }
        let path = data_dir.join("secret.key");
        let bytes = match std::fs::read_to_string(&path) {
            Ok(text) => hex::decode(text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .with_context(|| format!("{} must hold 64 hex digits", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| anyhow::anyhow!("no randomness for a secret key"))?;
                std::fs::create_dir_all(data_dir)
                    .with_context(|| format!("creating {}", data_dir.display()))?;
                write_private(&path, &hex::encode(key))?;
                key
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok((Sealer::new(&bytes)?, path.display().to_string()))
    }

    /// `enc:v1:<hex(nonce ‖ ciphertext ‖ tag)>`.
    pub fn seal(&self, plaintext: &str, context: &str) -> anyhow::Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("no randomness for a nonce"))?;
        let mut data = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("{PREFIX}{}", hex::encode(out)))
    }

    /// Opens a sealed value; a value without the prefix is plaintext from before sealing.
    pub fn open(&self, value: &str, context: &str) -> anyhow::Result<String> {
        let Some(sealed) = value.strip_prefix(PREFIX) else {
            return Ok(value.to_owned());
        };
        let bytes = hex::decode(sealed).context("a sealed credential is not hex")?;
        anyhow::ensure!(bytes.len() > NONCE_LEN, "a sealed credential is too short");
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| anyhow::anyhow!("a sealed credential has a bad nonce"))?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| {
                anyhow::anyhow!(
                    "a channel credential does not open with this key (was SWITCHBOARD_SECRET_KEY or secret.key changed?)"
                )
            })?;
        String::from_utf8(plain.to_vec()).context("a sealed credential is not UTF-8")
    }

    /// The config with its secret fields sealed for `channel_id`.
    pub fn seal_config(&self, channel_id: &str, config: &Value) -> anyhow::Result<Value> {
        let mut config = config.clone();
        if let Some(object) = config.as_object_mut() {
            for field in crate::registry::secret_fields() {
                if let Some(Value::String(value)) = object.get_mut(field)
                    && !value.starts_with(PREFIX)
                {
                    *value = self.seal(value, &format!("{channel_id}/{field}"))?;
                }
            }
        }
        Ok(config)
    }

    /// The config with its secret fields opened.
    pub fn open_config(&self, channel_id: &str, config: &mut Value) -> anyhow::Result<()> {
        if let Some(object) = config.as_object_mut() {
            for field in crate::registry::secret_fields() {
                if let Some(Value::String(value)) = object.get_mut(field) {
                    *value = self.open(value, &format!("{channel_id}/{field}"))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credentials_round_trip_and_are_bound_to_their_channel_and_field() {
        let sealer = Sealer::new(&[7u8; 32]).expect("key");
        let config = json!({ "bot_token": "123:ABC", "mode": "polling", "api_url": "http://x" });
        let sealed = sealer.seal_config("ch1", &config).expect("seal");
        let token = sealed["bot_token"].as_str().expect("string");
        assert!(
            token.starts_with(PREFIX) && !token.contains("ABC"),
            "{token}"
        );
        assert_eq!(sealed["mode"], "polling", "non-secret fields stay readable");
        let mut opened = sealed.clone();
        sealer.open_config("ch1", &mut opened).expect("open");
        assert_eq!(opened, config);
        // Another channel's ciphertext does not open here; nor does another key's.
        assert!(sealer.clone_open_fails("ch2", &sealed));
        let other = Sealer::new(&[8u8; 32]).expect("key");
        let mut copy = sealed.clone();
        assert!(other.open_config("ch1", &mut copy).is_err());
        // Two seals of one value differ (random nonce); plaintext from before sealing still reads.
        assert_ne!(sealer.seal("x", "c").ok(), sealer.seal("x", "c").ok());
        assert_eq!(sealer.open("plain", "c").ok().as_deref(), Some("plain"));
    }

    impl Sealer {
        fn clone_open_fails(&self, channel: &str, sealed: &Value) -> bool {
            let mut copy = sealed.clone();
            self.open_config(channel, &mut copy).is_err()
        }
    }

    #[test]
    fn the_key_file_is_created_once_and_private() {
        let dir = tempfile::tempdir().expect("dir");
        let (a, source) = Sealer::load(None, dir.path()).expect("created");
        assert!(source.ends_with("secret.key"));
        let sealed = a.seal("t", "c").expect("seal");
        let (b, _) = Sealer::load(None, dir.path()).expect("read back");
        assert_eq!(b.open(&sealed, "c").ok().as_deref(), Some("t"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("secret.key"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(Sealer::load(Some("not hex"), dir.path()).is_err());
        assert!(Sealer::load(Some(&"ab".repeat(32)), dir.path()).is_ok());
    }
}
