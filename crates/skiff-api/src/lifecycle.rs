//! A VM's life as a state machine: every change of state is an [`Event`],
//! and [`VmState::after`] is the one place that says which events may
//! happen in which state. The daemon's store applies a transition only
//! through it. The table is in docs/architecture.md.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a VM is in its life. Stored as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Defined, never started.
    Created,
    /// Booting: processes started, agent not yet ready.
    Starting,
    Running,
    Stopping,
    /// Stopped on request.
    Stopped,
    /// Ended without being asked to (crash, service exit, failed boot,
    /// died while the daemon was down).
    Exited,
    /// Being saved to disk (`skiff pause`).
    Pausing,
    /// Saved to disk: no QEMU runs and its memory is free; `skiff resume`
    /// brings it back as it was.
    Paused,
    /// Being restored from its snapshot.
    Resuming,
}

/// What happens to a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// `start` (or a restart policy, or autostart) begins a boot.
    Start,
    /// The agent said hello and the service started.
    Booted,
    /// The boot failed; nothing of it is left running.
    BootFailed,
    /// `stop` or `rm --force` begins a shutdown.
    Stop,
    /// The shutdown finished: no process is left.
    Halted,
    /// QEMU ended on its own (power-off, service exit, crash).
    Ended,
    /// A new daemon found the VM's QEMU still running.
    Adopted,
    /// A new daemon found the VM's QEMU gone.
    Lost,
    /// `pause` begins saving a running VM.
    Pause,
    /// The VM is saved and its QEMU gone.
    Saved,
    /// The save failed; the VM runs on.
    PauseFailed,
    /// `resume` begins restoring a paused VM.
    Resume,
    /// The VM runs again from its snapshot.
    Resumed,
    /// The restore failed; the VM stays paused, its snapshot kept.
    ResumeFailed,
}

/// An event that cannot happen in the VM's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{event:?} is not possible for a VM that is {}", state.as_str())]
pub struct IllegalTransition {
    pub state: VmState,
    pub event: Event,
}

impl VmState {
    /// Every state, in the order of a VM's life.
    pub const ALL: [VmState; 9] = [
        VmState::Created,
        VmState::Starting,
        VmState::Running,
        VmState::Stopping,
        VmState::Stopped,
        VmState::Exited,
        VmState::Pausing,
        VmState::Paused,
        VmState::Resuming,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Created => "created",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Stopped => "stopped",
            VmState::Exited => "exited",
            VmState::Pausing => "pausing",
            VmState::Paused => "paused",
            VmState::Resuming => "resuming",
        }
    }

    /// The state a stored name stands for.
    pub fn parse(s: &str) -> VmState {
        match s {
            "created" => VmState::Created,
            "starting" => VmState::Starting,
            "running" => VmState::Running,
            "stopping" => VmState::Stopping,
            "stopped" => VmState::Stopped,
            "pausing" => VmState::Pausing,
            "paused" => VmState::Paused,
            "resuming" => VmState::Resuming,
            // An unknown value can only come from a newer skiff; treat
            // the VM as not running rather than failing to load it.
            _ => VmState::Exited,
        }
    }

    /// Whether processes may exist for a VM in this state (a paused VM
    /// keeps its control channel's bridge and its network).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            VmState::Starting
                | VmState::Running
                | VmState::Stopping
                | VmState::Pausing
                | VmState::Paused
                | VmState::Resuming
        )
    }

    /// The state after `event`, or why it cannot happen now.
    pub fn after(self, event: Event) -> Result<VmState, IllegalTransition> {
        use Event::*;
        use VmState::*;
        let next = match (self, event) {
            (Created | Stopped | Exited, Start) => Starting,
            (Starting, Booted) => Running,
            (Starting, BootFailed) => Exited,
            (Starting | Running | Paused, Stop) => Stopping,
            (Stopping, Halted) => Stopped,
            // (A resumed QEMU may end before its resume is recorded.)
            (Starting | Running | Resuming, Ended) => Exited,
            // A daemon that died while pausing or resuming left the VM
            // running (the save was undone, the restore finished) or paused.
            (Starting | Running | Stopping | Pausing | Resuming, Adopted) => Running,
            (Paused, Adopted) => Paused,
            (Starting | Running | Stopping | Pausing | Paused | Resuming, Lost) => Exited,
            (Running, Pause) => Pausing,
            (Pausing, Saved) => Paused,
            (Pausing, PauseFailed) => Running,
            (Paused, Resume) => Resuming,
            (Resuming, Resumed) => Running,
            (Resuming, ResumeFailed) => Paused,
            (state, event) => return Err(IllegalTransition { state, event }),
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [VmState; 9] = VmState::ALL;

    #[test]
    fn the_whole_table() {
        use Event::*;
        // (event, states it is allowed in, state after)
        use VmState::{Paused, Pausing, Resuming};
        let table: [(Event, &[VmState], VmState); 14] = [
            (
                Start,
                &[VmState::Created, VmState::Stopped, VmState::Exited],
                VmState::Starting,
            ),
            (Booted, &[VmState::Starting], VmState::Running),
            (BootFailed, &[VmState::Starting], VmState::Exited),
            (
                Stop,
                &[VmState::Starting, VmState::Running, Paused],
                VmState::Stopping,
            ),
            (Halted, &[VmState::Stopping], VmState::Stopped),
            (
                Ended,
                &[VmState::Starting, VmState::Running, Resuming],
                VmState::Exited,
            ),
            (
                Adopted,
                &[
                    VmState::Starting,
                    VmState::Running,
                    VmState::Stopping,
                    Pausing,
                    Resuming,
                ],
                VmState::Running,
            ),
            (
                Lost,
                &[
                    VmState::Starting,
                    VmState::Running,
                    VmState::Stopping,
                    Pausing,
                    Paused,
                    Resuming,
                ],
                VmState::Exited,
            ),
            (Pause, &[VmState::Running], Pausing),
            (Saved, &[Pausing], Paused),
            (PauseFailed, &[Pausing], VmState::Running),
            (Resume, &[Paused], Resuming),
            (Resumed, &[Resuming], VmState::Running),
            (ResumeFailed, &[Resuming], Paused),
        ];
        assert_eq!(Paused.after(Adopted), Ok(Paused));
        for (event, allowed, next) in table {
            for state in ALL {
                // A paused VM stays paused when adopted (asserted above).
                if (state, event) == (Paused, Adopted) {
                    continue;
                }
                let got = state.after(event);
                if allowed.contains(&state) {
                    assert_eq!(got, Ok(next), "{state:?} + {event:?}");
                } else {
                    assert_eq!(got, Err(IllegalTransition { state, event }));
                }
            }
        }
    }

    #[test]
    fn a_stopped_vm_cannot_be_stopped_again_and_says_so() {
        let err = VmState::Stopped.after(Event::Stop).expect_err("illegal");
        assert_eq!(
            err.to_string(),
            "Stop is not possible for a VM that is stopped"
        );
        for s in ALL {
            assert_eq!(s.is_active(), s.after(Event::Adopted).is_ok());
        }
    }
}

/// One thing that happened to a VM, as `GET /v1/events` streams it (one
/// JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmEvent {
    /// Seconds since the Unix epoch.
    pub time: i64,
    pub vm: String,
    /// `created`, `removed`, or a state change: `start`, `booted`,
    /// `boot-failed`, `stop`, `halted`, `ended`, `adopted`, `lost`,
    /// `pause`, `saved`, `pause-failed`, `resume`, `resumed`,
    /// `resume-failed`.
    pub action: String,
    /// The state it is in afterwards (none once removed).
    pub state: Option<VmState>,
    /// Why, for humans.
    #[serde(default)]
    pub note: String,
}

impl Event {
    /// The event's name in the events stream.
    pub fn name(self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::Booted => "booted",
            Event::BootFailed => "boot-failed",
            Event::Stop => "stop",
            Event::Halted => "halted",
            Event::Ended => "ended",
            Event::Adopted => "adopted",
            Event::Lost => "lost",
            Event::Pause => "pause",
            Event::Saved => "saved",
            Event::PauseFailed => "pause-failed",
            Event::Resume => "resume",
            Event::Resumed => "resumed",
            Event::ResumeFailed => "resume-failed",
        }
    }
}
