//! Root filesystem images built from Debian packages: a recipe (TOML)
//! names the suite, the packages, files to add and commands to run; the
//! result is a directory in the cache, addressed by the recipe's hash, that
//! VMs boot into (read-only, under an overlay).

use crate::{Error, Progress};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What `skiff image build -f RECIPE` reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The image's name (`skiff run --image NAME`).
    pub name: String,
    #[serde(default = "default_suite")]
    pub suite: String,
    #[serde(default = "default_mirror")]
    pub mirror: String,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub files: Vec<RecipeFile>,
    /// Shell commands run inside the new root (chroot) after the packages.
    #[serde(default)]
    pub run: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    /// Absolute path inside the image.
    pub path: String,
    pub content: String,
    #[serde(default = "default_mode")]
    pub mode: u32,
}

fn default_suite() -> String {
    "bookworm".into()
}
fn default_mirror() -> String {
    "http://deb.debian.org/debian".into()
}
fn default_mode() -> u32 {
    0o644
}

/// What is wrong with a recipe, and where.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{}", .0.message().trim())]
    Toml(#[from] toml::de::Error),
    #[error("name {0:?}: use 1 to 63 lowercase letters, digits and '-'")]
    Name(String),
    #[error("suite {0:?} is not a Debian suite name")]
    Suite(String),
    #[error("package {0:?} is not a Debian package name")]
    Package(String),
    #[error("mirror {0:?} must be an http(s) URL")]
    Mirror(String),
    #[error("file path {0:?} must be absolute without '..'")]
    FilePath(String),
}

impl Recipe {
    /// Parse and check a recipe; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<Recipe, RecipeError> {
        let r: Recipe = toml::from_str(text)?;
        let name_ok = !r.name.is_empty()
            && r.name.len() <= 63
            && r.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(RecipeError::Name(r.name));
        }
        let word = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.:~_".contains(&b))
        };
        if !word(&r.suite) {
            return Err(RecipeError::Suite(r.suite));
        }
        if let Some(p) = r.packages.iter().find(|p| !word(p)) {
            return Err(RecipeError::Package(p.clone()));
        }
        if !(r.mirror.starts_with("http://") || r.mirror.starts_with("https://")) {
            return Err(RecipeError::Mirror(r.mirror));
        }
        for f in &r.files {
            if !f.path.starts_with('/') || f.path.split('/').any(|c| c == "..") {
                return Err(RecipeError::FilePath(f.path.clone()));
            }
        }
        Ok(r)
    }

    /// The content address: the same recipe always gives the same hash.
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&Sha256::digest(&json)[..12])
    }
}

/// A built image in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    pub hash: String,
    /// The root directory VMs boot into.
    pub root: PathBuf,
    pub built_at: u64,
    /// The recipe of a recipe image (none for pulled or imported ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<Recipe>,
    #[serde(default)]
    pub source: crate::ImageSource,
    /// What an OCI image says to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<crate::ContainerConfig>,
    /// The blobs (config and layers) an OCI image was made from, which
    /// `skiff image prune` keeps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<String>,
    /// Bytes of its files (measured when it was made; none in images made
    /// before skiff measured them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

pub fn images_dir(cache: &Path) -> PathBuf {
    cache.join("images")
}

/// Build `recipe` (or find it already built) with debootstrap.
pub fn build_image(
    recipe: &Recipe,
    cache: &Path,
    progress: &dyn Progress,
) -> Result<ImageInfo, Error> {
    let hash = recipe.hash();
    let dir = images_dir(cache).join(&recipe.name).join(&hash);
    let meta = dir.join("image.json");
    if let Ok(text) = fs::read_to_string(&meta) {
        if let Ok(info) = serde_json::from_str::<ImageInfo>(&text) {
            return Ok(info);
        }
    }
    let parent = images_dir(cache).join(&recipe.name);
    fs::create_dir_all(&parent).map_err(|e| Error::io("create", &parent, e))?;
    let staging = tempfile::tempdir_in(&parent)
        .map_err(|e| Error::io("create a directory in", &parent, e))?;
    let root = staging.path().join("root");

    progress.step(&format!(
        "debootstrap {} ({} packages)",
        recipe.suite,
        recipe.packages.len()
    ));
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase");
    if !recipe.packages.is_empty() {
        cmd.arg(format!("--include={}", recipe.packages.join(",")));
    }
    cmd.arg(&recipe.suite).arg(&root).arg(&recipe.mirror);
    run_with_progress(&mut cmd, progress)?;

    for f in &recipe.files {
        let target = root.join(f.path.trim_start_matches('/'));
        if let Some(p) = target.parent() {
            fs::create_dir_all(p).map_err(|e| Error::io("create", p, e))?;
        }
        fs::write(&target, &f.content).map_err(|e| Error::io("write", &target, e))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&target, fs::Permissions::from_mode(f.mode & 0o7777))
            .map_err(|e| Error::io("chmod", &target, e))?;
    }
    for command in &recipe.run {
        progress.step(&format!("run: {command}"));
        let out = Command::new("chroot")
            .arg(&root)
            .args(["/bin/sh", "-c", command])
            .output()
            .map_err(|e| Error::io("run chroot in", &root, e))?;
        if !out.status.success() {
            return Err(Error::ToolFailed {
                tool: "chroot",
                purpose: "run a recipe command",
                output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
    }
    // Downloaded packages are not needed in the image.
    if let Ok(entries) = fs::read_dir(root.join("var/cache/apt/archives")) {
        for e in entries.filter_map(Result::ok) {
            if e.path().extension().is_some_and(|x| x == "deb") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let built_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let _ = fs::remove_dir_all(&dir);
    let staged = staging.path().to_owned();
    fs::rename(&staged, &dir).map_err(|e| Error::io("move into place", &dir, e))?;
    std::mem::forget(staging); // renamed: nothing left to clean up
    let info = ImageInfo {
        name: recipe.name.clone(),
        hash,
        root: dir.join("root"),
        built_at,
        recipe: Some(recipe.clone()),
        source: crate::ImageSource::Recipe,
        config: None,
        blobs: Vec::new(),
        size: Some(crate::tree_size(&dir.join("root"))),
    };
    let json = serde_json::to_string_pretty(&info).map_err(|e| Error::Fetch {
        what: e.to_string(),
    })?;
    fs::write(&meta, json).map_err(|e| Error::io("write", &meta, e))?;
    Ok(info)
}

fn run_with_progress(cmd: &mut Command, progress: &dyn Progress) -> Result<(), Error> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::ToolMissing {
                tool: "debootstrap",
                purpose: "build images (install the debootstrap package)",
            },
            _ => Error::io("run", Path::new("debootstrap"), e),
        })?;
    let mut last = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            // debootstrap's own progress lines start with "I: ".
            if let Some(step) = line.strip_prefix("I: ") {
                progress.step(step);
            }
            last.push(line);
            if last.len() > 10 {
                last.remove(0);
            }
        }
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let status = child
        .wait()
        .map_err(|e| Error::io("wait for", Path::new("debootstrap"), e))?;
    if !status.success() {
        return Err(Error::ToolFailed {
            tool: "debootstrap",
            purpose: "build the image",
            output: format!("{}\n{}", last.join("\n"), stderr.trim()),
        });
    }
    Ok(())
}

/// Every built image, newest first.
pub fn list_images(cache: &Path) -> Vec<ImageInfo> {
    let mut out = Vec::new();
    let Ok(names) = fs::read_dir(images_dir(cache)) else {
        return out;
    };
    for name in names.filter_map(Result::ok) {
        let Ok(builds) = fs::read_dir(name.path()) else {
            continue;
        };
        for b in builds.filter_map(Result::ok) {
            if let Ok(text) = fs::read_to_string(b.path().join("image.json")) {
                if let Ok(info) = serde_json::from_str::<ImageInfo>(&text) {
                    out.push(info);
                }
            }
        }
    }
    out.sort_by_key(|i| std::cmp::Reverse(i.built_at));
    out
}

/// The newest build of image `name`.
pub fn find_image(cache: &Path, name: &str) -> Option<ImageInfo> {
    list_images(cache).into_iter().find(|i| i.name == name)
}

/// Remove every build of image `name`; false if there was none. (A
/// recipe image's directory is its name; a pulled one's is not, since a
/// reference holds `/` and `:`: the builds are found by their image.json.)
pub fn remove_image(cache: &Path, name: &str) -> Result<bool, Error> {
    let mut removed = false;
    let Ok(groups) = fs::read_dir(images_dir(cache)) else {
        return Ok(false);
    };
    for group in groups.filter_map(Result::ok) {
        let Ok(builds) = fs::read_dir(group.path()) else {
            continue;
        };
        for build in builds.filter_map(Result::ok) {
            let meta = fs::read_to_string(build.path().join("image.json"));
            let info = meta
                .ok()
                .and_then(|t| serde_json::from_str::<ImageInfo>(&t).ok());
            if info.is_some_and(|i| i.name == name) {
                let dir = build.path();
                fs::remove_dir_all(&dir).map_err(|e| Error::io("remove", &dir, e))?;
                removed = true;
            }
        }
        // An emptied group goes too (a failed rmdir means it is not empty).
        let _ = fs::remove_dir(group.path());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipe_parses_with_defaults_and_hashes_stably() {
        let r =
            Recipe::parse("name = \"python\"\npackages = [\"python3-minimal\"]\n").expect("valid");
        assert_eq!(r.suite, "bookworm");
        assert_eq!(r.mirror, "http://deb.debian.org/debian");
        assert_eq!(
            r.hash(),
            Recipe::parse("name = \"python\"\npackages = [\"python3-minimal\"]\n")
                .expect("valid")
                .hash()
        );
        let other = Recipe::parse("name = \"python\"\npackages = [\"python3\"]\n").expect("valid");
        assert_ne!(r.hash(), other.hash());
    }

    #[test]
    fn bad_recipes_say_what_is_wrong() {
        for (text, want) in [
            ("name = \"Py\"\n", "name \"Py\""),
            ("name = \"p\"\npackages = [\"a b\"]\n", "package \"a b\""),
            ("name = \"p\"\nmirror = \"ftp://x\"\n", "mirror"),
            (
                "name = \"p\"\nfiles = [{ path = \"etc/x\", content = \"\" }]\n",
                "must be absolute",
            ),
            ("name = \"p\"\nextra = 1\n", "unknown field"),
        ] {
            let err = Recipe::parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
