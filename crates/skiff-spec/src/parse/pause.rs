//! Whether a VM can be paused, and when it goes to sleep on its own.

use super::{Errs, Fields};
use crate::{parse_duration_ms, VmSpec};

/// The shortest idle period: shorter ones would pause a VM between the
/// commands of one script.
const MIN_SLEEP_AFTER_MS: u64 = 1_000;

/// `pausable` and `sleep_after`, read after the VM's shares and rootfs
/// (which rule pausing out).
pub(super) fn pause_fields<'a>(f: &mut Fields<'a>, spec: &mut VmSpec, errs: &mut Errs) {
    if let Some(pausable) = f.boolean("pausable", errs) {
        spec.pausable = pausable;
        let shared = match (spec.shares.is_empty(), spec.rootfs.is_some()) {
            (false, _) => Some("shares"),
            (true, true) => Some("rootfs"),
            _ => None,
        };
        if let (true, Some(key)) = (spec.pausable, shared) {
            errs.push(
                &f.sub(key),
                "a pausable VM cannot share host directories (QEMU cannot save virtiofs); use volumes or a disk".to_owned(),
            );
        }
    }
    let Some(text) = f.string("sleep_after", errs) else {
        return;
    };
    let path = f.sub("sleep_after");
    match parse_duration_ms(&text) {
        Ok(ms) if ms < MIN_SLEEP_AFTER_MS => errs.push(
            &path,
            format!("{text:?} is too short; the shortest idle period is 1s"),
        ),
        Ok(_) if !spec.pausable => errs.push(
            &path,
            "only a pausable VM can sleep; add `pausable = true`".to_owned(),
        ),
        Ok(ms) => spec.sleep_after_ms = Some(ms),
        Err(e) => errs.push(&path, e),
    }
}
