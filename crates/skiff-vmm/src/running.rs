//! A VM that lives exactly as long as the process that launched it
//! (`skiff run --standalone`): its processes are tied to this process, and
//! dropping it kills them and removes the runtime directory.

use crate::agent::AgentConn;
use crate::launch::{launch, LaunchError, LaunchOptions, Launched};
use crate::plan::LaunchPlan;
use skiff_proto::Message;
use std::time::Duration;

pub struct RunningVm {
    plan: LaunchPlan,
    vm: Launched,
    torn_down: bool,
    /// Keeps the console log bounded while the VM runs.
    trimmer: tokio::task::JoinHandle<()>,
}

impl RunningVm {
    /// Launch `plan` tied to this process; its logs go to its runtime
    /// directory. Returns once QEMU runs; see [`RunningVm::wait_ready`].
    pub async fn launch(plan: LaunchPlan) -> Result<RunningVm, LaunchError> {
        let opts = LaunchOptions {
            log_dir: plan.run_dir.clone(),
            tied: true,
        };
        let vm = launch(&plan, &opts).await?;
        let console = plan.console_log.clone();
        let trimmer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                crate::console::trim(&console);
            }
        });
        Ok(RunningVm {
            plan,
            vm,
            torn_down: false,
            trimmer,
        })
    }

    pub fn plan(&self) -> &LaunchPlan {
        &self.plan
    }

    /// Wait for the agent's ready connection and check its hello.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<AgentConn, LaunchError> {
        self.vm.wait_ready(timeout).await
    }

    /// Wait until QEMU exits on its own; returns how it ended and the last
    /// console lines. Cancel-safe.
    pub async fn wait_exit(&mut self) -> (String, String) {
        let status = match &mut self.vm.qemu.child {
            Some(c) => c
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string()),
            None => std::future::pending().await,
        };
        (status, crate::console::tail(&self.plan.console_log))
    }

    /// Ask the agent to power off, give QEMU `grace` to exit, then kill
    /// everything and remove the runtime directory.
    pub async fn shutdown(mut self, conn: Option<&mut AgentConn>, grace: Duration) {
        if let Some(conn) = conn {
            if conn.writer.send(&Message::Shutdown).await.is_ok() {
                let _ = tokio::time::timeout(grace, self.wait_exit()).await;
            }
        }
        self.teardown().await;
    }

    /// Kill every process, reap them, remove the runtime directory.
    pub async fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        self.trimmer.abort();
        self.vm.kill().await;
        let _ = std::fs::remove_dir_all(&self.plan.run_dir);
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.trimmer.abort();
        if !self.torn_down {
            // The children were started with kill_on_drop: dropping `vm`
            // kills them. The directory goes now.
            let _ = std::fs::remove_dir_all(&self.plan.run_dir);
        }
    }
}
