//! A seccomp filter for the virtiofsd of a writable share: no file on the
//! host may get a setuid or setgid bit through it.
//!
//! virtiofsd creates and chmods files with the mode the guest asks for, and
//! no option of its own refuses set-id bits. Guest root could otherwise
//! leave a setuid binary on the host owned by the share's owner (or root).
//! The filter is installed in the child before exec, stacks under
//! virtiofsd's own filter, and refuses (EPERM) every mode-setting call
//! whose mode carries S_ISUID or S_ISGID. `openat2`, whose mode sits in a
//! struct a filter cannot read, answers ENOSYS: virtiofsd then uses
//! `openat`, which the filter can check.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// The set-id bits of a mode.
const SET_ID_BITS: [u64; 2] = [libc::S_ISUID as u64, libc::S_ISGID as u64];

/// Why a filter could not be built (a bug, not a user's mistake).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the seccomp filter for virtiofsd: {0}")]
pub struct FilterError(String);

fn bit_set(arg: u8, bit: u64) -> Result<SeccompCondition, FilterError> {
    SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(bit),
        bit,
    )
    .map_err(|e| FilterError(e.to_string()))
}

/// Rules matching a mode argument `mode_arg` with a set-id bit, when the
/// `flags_arg` (if any) also has `flag` set.
fn set_id_rules(mode_arg: u8, flag: Option<(u8, u64)>) -> Result<Vec<SeccompRule>, FilterError> {
    SET_ID_BITS
        .iter()
        .map(|bit| {
            let mut conds = vec![bit_set(mode_arg, *bit)?];
            if let Some((arg, f)) = flag {
                conds.push(bit_set(arg, f)?);
            }
            SeccompRule::new(conds).map_err(|e| FilterError(e.to_string()))
        })
        .collect()
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    action: SeccompAction,
) -> Result<BpfProgram, FilterError> {
    let arch =
        TargetArch::try_from(std::env::consts::ARCH).map_err(|e| FilterError(e.to_string()))?;
    SeccompFilter::new(rules, SeccompAction::Allow, action, arch)
        .and_then(BpfProgram::try_from)
        .map_err(|e| FilterError(e.to_string()))
}

/// The filters to install, in order (each is a separate program).
pub fn no_set_id_files() -> Result<Vec<BpfProgram>, FilterError> {
    // __O_TMPFILE without O_DIRECTORY: a file made by O_TMPFILE has a mode.
    const O_TMPFILE_BIT: u64 = 0o20_000_000;
    let creat = libc::O_CREAT as u64;
    let mut refused: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    refused.insert(libc::SYS_chmod, set_id_rules(1, None)?);
    refused.insert(libc::SYS_fchmod, set_id_rules(1, None)?);
    refused.insert(libc::SYS_fchmodat, set_id_rules(2, None)?);
    refused.insert(libc::SYS_fchmodat2, set_id_rules(2, None)?);
    refused.insert(libc::SYS_mknod, set_id_rules(1, None)?);
    refused.insert(libc::SYS_mknodat, set_id_rules(2, None)?);
    refused.insert(libc::SYS_creat, set_id_rules(1, None)?);
    let mut open = set_id_rules(2, Some((1, creat)))?;
    open.extend(set_id_rules(2, Some((1, O_TMPFILE_BIT)))?);
    refused.insert(libc::SYS_open, open);
    let mut openat = set_id_rules(3, Some((2, creat)))?;
    openat.extend(set_id_rules(3, Some((2, O_TMPFILE_BIT)))?);
    refused.insert(libc::SYS_openat, openat);
    let eperm = compile(refused, SeccompAction::Errno(libc::EPERM as u32))?;
    let mut unreadable: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    unreadable.insert(libc::SYS_openat2, Vec::new());
    let enosys = compile(unreadable, SeccompAction::Errno(libc::ENOSYS as u32))?;
    Ok(vec![eperm, enosys])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// In a child process (a filter cannot be removed), make files with
    /// set-id modes and plain ones; report what the kernel allowed.
    #[test]
    fn set_id_modes_are_refused_and_plain_ones_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        let filters = no_set_id_files().expect("filters");
        let probe = dir.path().join("probe");
        std::fs::write(&probe, b"").expect("write");
        // SAFETY: fork in a test; the child only makes syscalls on paths
        // prepared here and exits with _exit, never returning into the
        // test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let mut code = 0;
            for f in &filters {
                if seccompiler::apply_filter(f).is_err() {
                    // SAFETY: _exit ends the forked child at once.
                    unsafe { libc::_exit(90) };
                }
            }
            let perms = |m| std::fs::Permissions::from_mode(m);
            if std::fs::set_permissions(&probe, perms(0o4755)).is_ok() {
                code |= 1;
            }
            if std::fs::set_permissions(&probe, perms(0o2755)).is_ok() {
                code |= 2;
            }
            if std::fs::set_permissions(&probe, perms(0o755)).is_err() {
                code |= 4;
            }
            use std::os::unix::fs::OpenOptionsExt;
            let create = |name: &str, mode| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(dir.path().join(name))
            };
            if create("suid", 0o4755).is_ok() {
                code |= 8;
            }
            if create("plain", 0o644).is_err() {
                code |= 16;
            }
            // SAFETY: _exit ends the forked child at once.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let code = libc::WEXITSTATUS(status);
        assert_eq!(
            code, 0,
            "bits of what went wrong: {code:#b} (90: filter not applied)"
        );
        // The umask may have narrowed the plain file; it has no set-id bit.
        let mode = std::fs::metadata(&probe)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o6000, 0);
        assert!(!dir.path().join("suid").exists());
    }
}
