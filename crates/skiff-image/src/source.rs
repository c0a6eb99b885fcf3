//! Where a cached image came from, and what an OCI image says to run.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The origin of an image in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ImageSource {
    /// Built from a recipe with debootstrap.
    #[default]
    Recipe,
    /// Pulled from a registry: the reference asked for and the manifest's
    /// digest.
    Pull { reference: String, digest: String },
    /// Imported from a `docker save` archive or an OCI layout.
    Import { path: PathBuf, digest: String },
}

impl ImageSource {
    pub fn label(&self) -> &'static str {
        match self {
            ImageSource::Recipe => "recipe",
            ImageSource::Pull { .. } => "pull",
            ImageSource::Import { .. } => "import",
        }
    }
}

/// What an OCI image's configuration says to run, and how (Entrypoint,
/// Cmd, Env, WorkingDir, User).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContainerConfig {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=VALUE`, in the image's order.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

impl ContainerConfig {
    /// The command a run executes, as docker decides it: the entrypoint
    /// followed by the given arguments, or by the image's Cmd when none are
    /// given.
    pub fn argv(&self, args: &[String]) -> Vec<String> {
        let tail = if args.is_empty() { &self.cmd } else { args };
        self.entrypoint.iter().chain(tail).cloned().collect()
    }

    /// The environment as pairs (an entry without `=` is a name with an
    /// empty value, as docker reads it).
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv.clone(), String::new()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_replace_cmd_and_follow_the_entrypoint() {
        let c = ContainerConfig {
            entrypoint: vec!["/entry.sh".into()],
            cmd: vec!["serve".into(), "--port=80".into()],
            env: vec!["A=1".into(), "B=x=y".into(), "EMPTY".into()],
            ..Default::default()
        };
        assert_eq!(c.argv(&[]), ["/entry.sh", "serve", "--port=80"]);
        assert_eq!(c.argv(&["sh".into()]), ["/entry.sh", "sh"]);
        let bare = ContainerConfig {
            cmd: vec!["python3".into()],
            ..Default::default()
        };
        assert_eq!(bare.argv(&["ls".into()]), ["ls"]);
        assert_eq!(
            c.env_pairs(),
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "x=y".to_owned()),
                ("EMPTY".to_owned(), String::new())
            ]
        );
    }
}
