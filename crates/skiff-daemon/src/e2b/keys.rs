//! API keys of the E2B-compatible listener: a file with one key per line
//! (blank lines and `#` comments skipped). A sandbox belongs to the key
//! that made it, recorded by the key's hash.

use sha2::{Digest, Sha256};
use std::path::Path;

/// The shortest key accepted: a guessable key would open the sandboxes.
pub const MIN_KEY_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("cannot read the E2B API key file {path}: {why}")]
    Read { path: String, why: String },
    #[error("line {line} of {path}: a key of {len} characters is too short; use at least {MIN_KEY_LEN} random characters (for example: openssl rand -hex 24)")]
    TooShort {
        path: String,
        line: usize,
        len: usize,
    },
    #[error("{path} holds no key; put one per line (for example from: openssl rand -hex 24)")]
    Empty { path: String },
}

/// The keys allowed in, as hashes (the keys themselves are not kept).
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    hashes: Vec<[u8; 32]>,
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    pub fn parse(text: &str, path: &str) -> Result<ApiKeys, KeyError> {
        let mut hashes = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let key = line.trim();
            if key.is_empty() || key.starts_with('#') {
                continue;
            }
            if key.len() < MIN_KEY_LEN {
                return Err(KeyError::TooShort {
                    path: path.to_owned(),
                    line: i + 1,
                    len: key.len(),
                });
            }
            hashes.push(hash(key));
        }
        if hashes.is_empty() {
            return Err(KeyError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(ApiKeys { hashes })
    }

    pub fn read(file: &Path) -> Result<ApiKeys, KeyError> {
        let path = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| KeyError::Read {
            path: path.clone(),
            why: e.to_string(),
        })?;
        ApiKeys::parse(&text, &path)
    }

    /// The owner id of `key` (hex of its hash) if it is one of these.
    /// Hashes are compared, so timing says nothing about the keys.
    pub fn owner(&self, key: &str) -> Option<String> {
        let h = hash(key);
        let mut found = false;
        for k in &self.hashes {
            found |= crate::token_matches(k, &h);
        }
        found.then(|| hex::encode(&h[..16]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_one_per_line_and_short_ones_refused() {
        let keys = ApiKeys::parse(
            "# team keys\n\n0123456789abcdef0123\n  fedcba9876543210fedc  \n",
            "k",
        )
        .expect("keys");
        let a = keys.owner("0123456789abcdef0123").expect("first");
        let b = keys.owner("fedcba9876543210fedc").expect("second, trimmed");
        assert_ne!(a, b, "each key is an owner of its own");
        assert_eq!(a.len(), 32);
        assert_eq!(keys.owner("0123456789abcdef012"), None);
        assert_eq!(keys.owner(""), None);
        assert_eq!(
            ApiKeys::parse("short\n", "k").expect_err("short"),
            KeyError::TooShort {
                path: "k".into(),
                line: 1,
                len: 5
            }
        );
        assert!(matches!(
            ApiKeys::parse("# none\n", "k"),
            Err(KeyError::Empty { .. })
        ));
    }
}
