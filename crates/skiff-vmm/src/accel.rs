//! Choosing between hardware KVM and QEMU's software emulation (TCG).
//!
//! `/dev/kvm` existing is not enough: on nested or paravirtualised hosts
//! (PVM, for example) it exists but a stock guest kernel cannot run on it.
//! Hardware KVM is used only when the CPU advertises `vmx` or `svm` *and*
//! `/dev/kvm` opens read-write.

use std::fmt;

/// How the guest CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// What the user asks for: the spec's `accel` (auto, kvm, tcg).
pub use skiff_spec::Accel as AccelChoice;

/// What the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKvm {
    pub cpu_has_virt: bool,
    pub dev_kvm_opens: bool,
}

impl HostKvm {
    /// Look at this host.
    pub fn probe() -> HostKvm {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        HostKvm {
            cpu_has_virt: cpu_flags_have_virt(&cpuinfo),
            dev_kvm_opens: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok(),
        }
    }

    fn usable(&self) -> bool {
        self.cpu_has_virt && self.dev_kvm_opens
    }

    fn why_not(&self) -> &'static str {
        if !self.cpu_has_virt {
            "the CPU has no vmx/svm flag, so /dev/kvm (if any) is not hardware KVM"
        } else {
            "/dev/kvm cannot be opened read-write"
        }
    }
}

/// True if a `flags` line of /proc/cpuinfo lists `vmx` or `svm`.
pub fn cpu_flags_have_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm")
}

/// The decision, with the one-line notice to show when falling back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelDecision {
    pub accel: Accel,
    pub notice: Option<String>,
}

/// Decide which accelerator to use. Forcing `kvm` on a host without usable
/// KVM is honoured (the user may know better), with a warning.
pub fn decide(choice: AccelChoice, host: &HostKvm) -> AccelDecision {
    match choice {
        AccelChoice::Tcg => AccelDecision { accel: Accel::Tcg, notice: None },
        AccelChoice::Kvm if host.usable() => AccelDecision { accel: Accel::Kvm, notice: None },
        AccelChoice::Kvm => AccelDecision {
            accel: Accel::Kvm,
            notice: Some(format!("warning: KVM forced although {}; the guest may fail to start", host.why_not())),
        },
        AccelChoice::Auto if host.usable() => AccelDecision { accel: Accel::Kvm, notice: None },
        AccelChoice::Auto => AccelDecision {
            accel: Accel::Tcg,
            notice: Some(format!(
                "notice: hardware KVM is not usable here ({}); using TCG software emulation, which is much slower",
                host.why_not()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_VIRT: HostKvm = HostKvm {
        cpu_has_virt: false,
        dev_kvm_opens: true,
    };
    const REAL_KVM: HostKvm = HostKvm {
        cpu_has_virt: true,
        dev_kvm_opens: true,
    };

    #[test]
    fn cpu_flags_are_matched_as_whole_words() {
        assert!(cpu_flags_have_virt("flags\t\t: fpu vme vmx sse\n"));
        assert!(cpu_flags_have_virt("flags\t\t: fpu svm\n"));
        assert!(!cpu_flags_have_virt(
            "flags\t\t: fpu vmxnotreally\nmodel name: vmx\n"
        ));
    }

    #[test]
    fn auto_falls_back_to_tcg_with_a_notice_when_kvm_is_not_hardware() {
        let d = decide(AccelChoice::Auto, &NO_VIRT);
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.notice.as_deref().is_some_and(|n| n.contains("TCG")));
    }

    #[test]
    fn auto_uses_real_kvm_silently() {
        assert_eq!(
            decide(AccelChoice::Auto, &REAL_KVM),
            AccelDecision {
                accel: Accel::Kvm,
                notice: None
            }
        );
    }

    #[test]
    fn forced_choices_are_honoured() {
        assert_eq!(decide(AccelChoice::Tcg, &REAL_KVM).accel, Accel::Tcg);
        let forced = decide(AccelChoice::Kvm, &NO_VIRT);
        assert_eq!(forced.accel, Accel::Kvm);
        assert!(forced.notice.is_some());
    }

    #[test]
    fn choice_parses_and_rejects_unknown_values() {
        assert_eq!("tcg".parse::<AccelChoice>(), Ok(AccelChoice::Tcg));
        assert!("hvf".parse::<AccelChoice>().is_err());
    }
}
