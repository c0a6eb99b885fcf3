//! Image references as docker users write them: `python:3.12-slim`,
//! `ghcr.io/org/app@sha256:…`, `localhost:5000/app:1.0`.

use crate::OciError;

/// Docker Hub's registry, as references name it and as its API is reached.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `docker.io`, `ghcr.io`, `localhost:5000`.
    pub registry: String,
    /// `library/python`, `org/app`.
    pub repository: String,
    /// `3.12-slim`; `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(text: &str) -> Result<Reference, OciError> {
        let bad = |why: &str| OciError::BadReference {
            reference: text.to_owned(),
            why: why.to_owned(),
        };
        if text.is_empty() || text.len() > 512 {
            return Err(bad("it must be 1 to 512 characters"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => {
                check_digest(d).map_err(|why| bad(&why))?;
                (r, Some(d.to_owned()))
            }
            None => (text, None),
        };
        // A tag is after the last ':' that comes after the last '/' (a
        // ':' before it is a registry port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_owned()),
            ),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(bad(
                    "a tag is 1 to 128 of a-z A-Z 0-9 . _ - (not first . or -)",
                ));
            }
        }
        // The first component is a registry if it looks like a host: it
        // has a '.' or a ':' or is `localhost`.
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), path.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        // Docker Hub's other names are Docker Hub.
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        let host_ok = registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        if !host_ok {
            return Err(bad(
                "a registry is a host name or address, with an optional :port",
            ));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        // Docker's rule: lower-case alphanumerics, joined by one `.`, one
        // or two `_`, or any number of `-`.
        let component_ok = |c: &str| {
            let b = c.as_bytes();
            let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
            !b.is_empty()
                && b.iter().all(|x| alnum(x) || b"._-".contains(x))
                && b.first().is_some_and(alnum)
                && b.last().is_some_and(alnum)
                && !["..", "___", ".-", "-.", "._", "_."]
                    .iter()
                    .any(|bad| c.contains(bad))
        };
        if !repository.split('/').all(component_ok) {
            return Err(bad(
                "a repository is lower-case letters, digits and . _ - between slashes",
            ));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host the registry API is reached at.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What a manifest is asked for by: the digest if there is one.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The short form docker prints (`python:3.12-slim`,
    /// `localhost:5000/app:1.0`), which is also the image's local name.
    pub fn familiar(&self) -> String {
        let repo = if self.registry == DOCKER_HUB {
            let short = self.repository.strip_prefix("library/");
            short.unwrap_or(&self.repository).to_owned()
        } else {
            format!("{}/{}", self.registry, self.repository)
        };
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => format!("{repo}:{t}@{d}"),
            (Some(t), None) => format!("{repo}:{t}"),
            (None, Some(d)) => format!("{repo}@{d}"),
            (None, None) => repo,
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.familiar())
    }
}

/// `sha256:` and 64 lower-case hex digits (the only digest skiff accepts).
pub fn check_digest(d: &str) -> Result<(), String> {
    match d.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            Ok(())
        }
        Some(_) => Err(format!(
            "{d} is not a sha256 digest (sha256: and 64 lower-case hex digits)"
        )),
        None => Err(format!("{d}: only sha256 digests are supported")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_names_are_normalised_as_docker_does() {
        let p = r("python:3.12-slim");
        assert_eq!(
            (p.registry.as_str(), p.repository.as_str(), p.tag.as_deref()),
            ("docker.io", "library/python", Some("3.12-slim"))
        );
        assert_eq!(p.api_host(), "registry-1.docker.io");
        assert_eq!(p.familiar(), "python:3.12-slim");
        assert_eq!(r("alpine").familiar(), "alpine:latest");
        assert_eq!(r("bitnami/redis:7").repository, "bitnami/redis");
        assert_eq!(r("docker.io/library/alpine").familiar(), "alpine:latest");
        assert_eq!(
            r("index.docker.io/library/alpine").familiar(),
            "alpine:latest"
        );
    }

    #[test]
    fn registries_ports_tags_and_digests_are_told_apart() {
        let d = format!("sha256:{}", "a".repeat(64));
        let p = r("localhost:5000/team/app:1.0");
        assert_eq!(
            (p.registry.as_str(), p.repository.as_str(), p.tag.as_deref()),
            ("localhost:5000", "team/app", Some("1.0"))
        );
        assert_eq!(p.api_host(), "localhost:5000");
        let p = r(&format!("ghcr.io/org/app@{d}"));
        assert_eq!(
            (p.tag.as_deref(), p.digest.as_deref()),
            (None, Some(d.as_str()))
        );
        assert_eq!(p.manifest_ref(), d);
        let p = r("127.0.0.1:5000/app");
        assert_eq!(
            (p.registry.as_str(), p.tag.as_deref()),
            ("127.0.0.1:5000", Some("latest"))
        );
        assert_eq!(p.familiar(), "127.0.0.1:5000/app:latest");
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        for (text, why) in [
            ("", "1 to 512"),
            ("App:1", "lower-case"),
            ("app:", "a tag is"),
            ("app:-x", "a tag is"),
            ("app@sha256:abc", "not a sha256 digest"),
            ("app@md5:abc", "only sha256"),
            ("a//b", "lower-case"),
            ("a..b", "lower-case"),
            ("app-", "lower-case"),
            ("a.b?x/app", "a registry is"),
        ] {
            let e = Reference::parse(text).expect_err(text).to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
