//! The default guest image: an initramfs whose /init is skiff-agent, with
//! busybox for ordinary commands and the kernel modules the guest needs.
//!
//! Images are content-addressed: the cache key is a hash of every input, so a
//! changed agent, busybox or kernel builds a new image and an unchanged one is
//! reused without rebuilding.

use crate::cpio::CpioWriter;
use crate::kernel::Kernel;
use crate::{Error, Progress};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bump when the layout of the image changes, to invalidate old caches.
const LAYOUT_VERSION: &str = "skiff-initramfs-v1";

/// What goes into an initramfs.
#[derive(Debug, Clone)]
pub struct InitramfsSpec<'a> {
    /// The static skiff-agent binary, installed as /init.
    pub agent: &'a Path,
    /// A static busybox, installed as /bin/busybox with a link per applet.
    pub busybox: Option<&'a Path>,
    pub kernel: &'a Kernel,
    /// Module names (as in modules.dep, without `.ko`) the guest loads at
    /// boot, with their dependencies.
    pub modules: &'a [&'a str],
    /// Modules loaded only when the kernel command line asks for their
    /// group (`skiff.load=GROUP`), listed in `modules.GROUP.dep`.
    pub module_groups: &'a [(&'a str, &'a [&'a str])],
}

/// A built image in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initramfs {
    pub path: PathBuf,
    /// The content hash it is stored under.
    pub key: String,
    /// Whether it was built now (false: found in the cache).
    pub built: bool,
}

/// Return the cached initramfs for `spec`, building it first if needed.
pub fn ensure_initramfs(
    spec: &InitramfsSpec<'_>,
    cache_dir: &Path,
    progress: &dyn Progress,
) -> Result<Initramfs, Error> {
    let agent = read_static_binary(
        spec.agent,
        "skiff-agent",
        "build it with scripts/build-agent.sh",
    )?;
    let busybox = match spec.busybox {
        Some(p) => Some(read_static_binary(
            p,
            "busybox",
            "install the busybox-static package",
        )?),
        None => None,
    };
    let mut modules = match &spec.kernel.modules_dir {
        Some(dir) => module_closure(dir, spec.modules, spec.kernel.unsigned_modules_ok)?,
        None => Vec::new(),
    };
    // Each group's own modules (those not already in the base set), and the
    // dep lines of its wanted modules.
    let mut groups: Vec<(String, String)> = Vec::new();
    if let Some(dir) = &spec.kernel.modules_dir {
        for (group, wanted) in spec.module_groups {
            let closure = module_closure(dir, wanted, spec.kernel.unsigned_modules_ok)?;
            let mut dep = String::new();
            for mut m in closure {
                m.base = false;
                dep.push_str(&m.dep_line);
                dep.push('\n');
                if !modules.iter().any(|b| b.rel_path == m.rel_path) {
                    modules.push(m);
                }
            }
            groups.push(((*group).to_owned(), dep));
        }
    }

    let mut hasher = Sha256::new();
    hasher.update(LAYOUT_VERSION);
    hash_part(&mut hasher, "agent", &agent);
    hash_part(
        &mut hasher,
        "busybox",
        busybox.as_deref().unwrap_or_default(),
    );
    hash_part(&mut hasher, "release", spec.kernel.release.as_bytes());
    for m in &modules {
        hash_part(&mut hasher, &m.rel_path, &m.bytes);
        hash_part(&mut hasher, "deps", m.dep_line.as_bytes());
    }
    for (group, dep) in &groups {
        hash_part(&mut hasher, group, dep.as_bytes());
    }
    let key = hex::encode(hasher.finalize());
    let dir = cache_dir.join("initramfs");
    let path = dir.join(format!("{}.cpio", &key[..32]));
    if path.is_file() {
        return Ok(Initramfs {
            path,
            key,
            built: false,
        });
    }

    progress.step("building the guest initramfs");
    let mut w = CpioWriter::new();
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
        "lib",
        "lib/modules",
        "mnt",
        "var",
    ] {
        w.dir(d, 0o755);
    }
    w.file("init", 0o755, &agent);
    w.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    w.file(
        "etc/group",
        0o644,
        b"root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
    );
    w.file("etc/hostname", 0o644, b"skiff\n");
    if let (Some(bytes), Some(bb_path)) = (&busybox, spec.busybox) {
        w.file("bin/busybox", 0o755, bytes);
        for applet in busybox_applets(bb_path)? {
            if applet != "bin/busybox" && applet != "init" && applet != "sbin/init" {
                w.symlink(&applet, "/bin/busybox");
            }
        }
    }
    if !modules.is_empty() {
        let base = format!("lib/modules/{}", spec.kernel.release);
        let mut dirs = BTreeSet::new();
        for m in &modules {
            let mut parent = Path::new(&m.rel_path).parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                dirs.insert(p.to_string_lossy().into_owned());
                parent = p.parent();
            }
        }
        w.dir(&base, 0o755);
        for d in &dirs {
            w.dir(&format!("{base}/{d}"), 0o755);
        }
        let mut dep = String::new();
        for m in &modules {
            w.file(&format!("{base}/{}", m.rel_path), 0o644, &m.bytes);
            if m.base {
                dep.push_str(&m.dep_line);
                dep.push('\n');
            }
        }
        w.file(&format!("{base}/modules.dep"), 0o644, dep.as_bytes());
        for (group, group_dep) in &groups {
            w.file(
                &format!("{base}/modules.{group}.dep"),
                0o644,
                group_dep.as_bytes(),
            );
        }
    }
    let bytes = w.finish();

    fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    let tmp = dir.join(format!(".{}.tmp{}", &key[..32], std::process::id()));
    fs::write(&tmp, &bytes).map_err(|e| Error::io("write", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| Error::io("move into place", &path, e))?;
    Ok(Initramfs {
        path,
        key,
        built: true,
    })
}

fn hash_part(h: &mut Sha256, name: &str, bytes: &[u8]) {
    h.update((name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// Read a binary that must run without a dynamic loader in the guest.
fn read_static_binary(
    path: &Path,
    what: &'static str,
    fix: &'static str,
) -> Result<Vec<u8>, Error> {
    let bytes = fs::read(path).map_err(|e| Error::io("read", path, e))?;
    match crate::elf::is_static(&bytes) {
        Some(true) => Ok(bytes),
        Some(false) => Err(Error::NotStatic {
            what,
            path: path.to_owned(),
            fix,
        }),
        None => Err(Error::NotElf {
            what,
            path: path.to_owned(),
        }),
    }
}

/// One module file to put in the image.
struct ModuleFile {
    rel_path: String,
    bytes: Vec<u8>,
    /// Its line for the trimmed modules.dep.
    dep_line: String,
    /// Whether it is loaded at every boot (else only with its group).
    base: bool,
}

/// The wanted modules and everything they depend on, from `modules.dep`.
fn module_closure(
    modules_dir: &Path,
    wanted: &[&str],
    strip_signatures: bool,
) -> Result<Vec<ModuleFile>, Error> {
    let dep_path = modules_dir.join("modules.dep");
    let dep_text = fs::read_to_string(&dep_path).map_err(|e| Error::io("read", &dep_path, e))?;
    let lines = select_modules(&dep_text, wanted).map_err(|name| Error::ModuleMissing {
        name,
        modules_dir: modules_dir.to_owned(),
    })?;
    let mut files = Vec::new();
    let mut seen = BTreeSet::new();
    for (module, deps) in &lines {
        for rel in deps.iter().chain(std::iter::once(module)) {
            if seen.insert(rel.clone()) {
                let p = modules_dir.join(rel);
                let mut bytes = fs::read(&p).map_err(|e| Error::io("read", &p, e))?;
                if strip_signatures {
                    let unsigned_len = strip_module_signature(&bytes).len();
                    bytes.truncate(unsigned_len);
                }
                let dep_line = dep_line_for(&dep_text, rel).unwrap_or_else(|| format!("{rel}:"));
                files.push(ModuleFile {
                    rel_path: rel.clone(),
                    bytes,
                    dep_line,
                    base: true,
                });
            }
        }
    }
    Ok(files)
}

const MODULE_SIG_MAGIC: &[u8] = b"~Module signature appended~\n";
/// `struct module_signature`: algo, hash, id_type, signer_len, key_id_len,
/// 3 bytes of padding, then the signature length as a big-endian u32.
const MODULE_SIG_INFO_LEN: usize = 12;

/// The module without its appended signature (unchanged if it has none or
/// the trailer does not add up).
///
/// Why: the kernel checks an appended signature at every load, hashing the
/// whole module, which under TCG costs a noticeable share of the guest's
/// boot. Kernels that *require* signatures (CONFIG_MODULE_SIG_FORCE or a
/// lockdown) refuse unsigned modules, so this is applied only when the
/// kernel's config says signatures are optional.
pub fn strip_module_signature(ko: &[u8]) -> &[u8] {
    let Some(body) = ko.strip_suffix(MODULE_SIG_MAGIC) else {
        return ko;
    };
    let Some(info_start) = body.len().checked_sub(MODULE_SIG_INFO_LEN) else {
        return ko;
    };
    let info = &body[info_start..];
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    match info_start.checked_sub(sig_len) {
        Some(end) => &body[..end],
        None => ko,
    }
}

/// For each wanted module name, its path and dependency paths from
/// modules.dep; a name not found is returned as the error. Names match with
/// `-` and `_` treated alike, as modprobe does.
pub fn select_modules(
    dep_text: &str,
    wanted: &[&str],
) -> Result<Vec<(String, Vec<String>)>, String> {
    let norm = |s: &str| s.replace('-', "_");
    let mut out = Vec::new();
    for name in wanted {
        let found = dep_text.lines().find_map(|line| {
            let (module, deps) = line.split_once(':')?;
            let file = module.rsplit('/').next()?;
            let stem = file.strip_suffix(".ko")?;
            (norm(stem) == norm(name)).then(|| {
                (
                    module.trim().to_owned(),
                    deps.split_whitespace()
                        .map(str::to_owned)
                        .collect::<Vec<_>>(),
                )
            })
        });
        match found {
            Some(entry) => out.push(entry),
            None => return Err((*name).to_owned()),
        }
    }
    Ok(out)
}

fn dep_line_for(dep_text: &str, rel: &str) -> Option<String> {
    dep_text
        .lines()
        .find(|l| l.split_once(':').is_some_and(|(m, _)| m.trim() == rel))
        .map(str::to_owned)
}

/// The applet paths busybox provides (`bin/sh`, `usr/bin/awk`, ...).
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, Error> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| Error::io("run", busybox, e))?;
    if !out.status.success() {
        return Err(Error::ToolFailed {
            tool: "busybox",
            purpose: "list its applets",
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_owned())
        .filter(|l| !l.is_empty() && !l.contains(".."))
        .collect();
    applets.sort();
    applets.dedup();
    Ok(applets)
}

#[cfg(test)]
mod tests {
    use super::select_modules;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vsock.ko
";

    #[test]
    fn wanted_modules_come_with_their_dependencies() {
        let got =
            select_modules(DEP, &["virtio_mmio", "vmw-vsock-virtio-transport"]).expect("found");
        assert_eq!(got[0].0, "kernel/drivers/virtio/virtio_mmio.ko");
        assert_eq!(got[0].1.len(), 2);
        assert_eq!(got[1].1, vec!["kernel/net/vmw_vsock/vsock.ko".to_owned()]);
    }

    #[test]
    fn module_signatures_are_stripped_only_when_well_formed() {
        use super::strip_module_signature;
        let mut ko = b"\x7fELFmodule-body".to_vec();
        let body_len = ko.len();
        ko.extend_from_slice(&[0xAB; 20]); // the signature
        ko.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 20]); // module_signature
        ko.extend_from_slice(b"~Module signature appended~\n");
        assert_eq!(strip_module_signature(&ko), &ko[..body_len]);
        // No trailer, or a signature length larger than the file: unchanged.
        assert_eq!(strip_module_signature(b"plain"), b"plain");
        let mut lying = vec![0, 0, 2, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        lying.extend_from_slice(b"~Module signature appended~\n");
        assert_eq!(strip_module_signature(&lying), &lying[..]);
    }

    #[test]
    fn an_unknown_module_is_named_in_the_error() {
        assert_eq!(select_modules(DEP, &["nope"]), Err("nope".to_owned()));
    }
}
