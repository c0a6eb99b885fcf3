//! `skiff run -d`: the flags of a run become a spec of one named VM of the
//! daemon, whose service is the command; it is created and started, and
//! stays when this returns (as `docker run -d`). The spec is written as
//! TOML text, so the daemon validates it as it validates every spec.

use crate::cli_args::RunArgs;
use crate::client::Client;
use anyhow::{bail, Result};
use skiff_image::ContainerConfig;

/// A TOML string (JSON's escapes are TOML's basic-string escapes; DEL,
/// which JSON leaves as it is and TOML refuses, is escaped too).
fn quoted(s: &str) -> String {
    serde_json::to_string(s)
        .unwrap_or_else(|_| "\"\"".into())
        .replace('\u{7f}', "\\u007f")
}

fn quoted_list(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| quoted(s)).collect();
    format!("[{}]", parts.join(", "))
}

/// The spec text of the detached run `a` named `name`; `config` is its
/// OCI image's (None: a recipe image, a rootfs, or none).
pub(crate) fn detached_spec(
    name: &str,
    a: &RunArgs,
    config: Option<&ContainerConfig>,
) -> Result<String> {
    let mut t = format!("[vm.{name}]\nvcpus = {}\nmemory = {}\n", a.cpus, a.memory);
    if let Some(image) = &a.image {
        t += &format!("image = {}\n", quoted(image));
    }
    if let Some(dir) = &a.rootfs {
        let dir = std::path::absolute(dir)?;
        t += &format!(
            "rootfs = {{ path = {}, writable = {} }}\n",
            quoted(&dir.to_string_lossy()),
            a.rootfs_rw
        );
    }
    if let Some(k) = &a.kernel.kernel {
        let path = quoted(&std::path::absolute(k)?.to_string_lossy());
        t += &match &a.kernel.modules {
            Some(m) => format!(
                "kernel = {{ path = {path}, modules = {} }}\n",
                quoted(&std::path::absolute(m)?.to_string_lossy())
            ),
            None => format!("kernel = {{ path = {path} }}\n"),
        };
    }
    match a.accel {
        skiff_spec::Accel::Kvm => t += "accel = \"kvm\"\n",
        skiff_spec::Accel::Tcg => t += "accel = \"tcg\"\n",
        skiff_spec::Accel::Auto => {}
    }
    // As an attached run: no network unless asked, user mode for -p.
    match a.net.as_deref() {
        None if a.publish.is_empty() => {}
        None | Some("user") => t += "network = \"user\"\n",
        Some("none") => t += "network = \"none\"\n",
        Some(net) => {
            t += &format!(
                "network = [{{ mode = \"bridge\", network = {} }}]\n",
                quoted(net)
            )
        }
    }
    if !a.publish.is_empty() {
        t += &format!("forward_ports = {}\n", quoted_list(&a.publish));
    }
    // A command after the image replaces its Cmd and keeps its Entrypoint;
    // none leaves both to the daemon, which runs them as the service.
    let command = match config {
        Some(c) if !a.command.is_empty() => c.argv(&a.command),
        _ => a.command.clone(),
    };
    if command.is_empty() && config.is_none() {
        bail!("no command given for the detached VM; give it after the image or after --");
    }
    if !command.is_empty() {
        t += &format!("command = {}\n", quoted_list(&command));
    }
    if !a.env.is_empty() {
        let pairs: Vec<String> = a
            .env
            .iter()
            .map(|(k, v)| format!("{} = {}", quoted(k), quoted(v)))
            .collect();
        t += &format!("env = {{ {} }}\n", pairs.join(", "));
    }
    for share in &a.volume {
        t += &format!(
            "[[vm.{name}.shares]]\nsource = {}\ntarget = {}\nreadonly = {}\n",
            quoted(&share.source.to_string_lossy()),
            quoted(&share.target),
            share.readonly
        );
    }
    Ok(t)
}

/// `skiff run -d`: create and start the VM; print its name.
pub async fn run_detached(c: &Client, a: RunArgs) -> Result<i32> {
    let name = a.name.clone().unwrap_or_else(|| {
        let id = skiff_daemon::paths::new_vm_id();
        format!("run-{}", &id[..id.len().min(8)])
    });
    // The name becomes a table key of the spec: only a valid name may.
    skiff_spec::check_name(&name).map_err(|e| anyhow::anyhow!("--name {name:?}: {e}"))?;
    let config = match &a.image {
        Some(image) => crate::cli_image::resolve(image, a.quiet).await?.config,
        None => None,
    };
    let spec = detached_spec(&name, &a, config.as_ref())?;
    c.ensure_daemon().await?;
    crate::cli_vm::create_from_text(c, spec, true, a.rm).await?;
    crate::cli_vm::start_quietly(c, &name, a.quiet).await?;
    println!("{name}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(argv: &[&str]) -> RunArgs {
        let argv = std::iter::once("skiff").chain(argv.iter().copied());
        let argv = crate::cli_args::docker_run_argv(argv.map(Into::into).collect());
        let cli = crate::cli_args::Cli::try_parse_from(argv).expect("parse");
        match cli.command {
            crate::cli_args::Command::Run(a) => a.normalized().expect("normalized"),
            _ => panic!("not run"),
        }
    }

    #[test]
    fn a_detached_run_is_a_spec_the_daemon_accepts() {
        let a = args(&[
            "run",
            "-d",
            "--name",
            "web",
            "-m",
            "512m",
            "--cpus",
            "2",
            "-p",
            "8080:80",
            "-e",
            "GREETING=a \"quoted\" value",
            "base",
            "sh",
            "-c",
            "echo $GREETING",
        ]);
        let text = detached_spec("web", &a, None).expect("spec");
        let vms = skiff_spec::parse_file(&text).unwrap_or_else(|e| panic!("{text}\n{e}"));
        let vm = &vms[0];
        assert_eq!((vm.name.as_str(), vm.vcpus, vm.memory_mib), ("web", 2, 512));
        assert_eq!(vm.image.as_deref(), Some("base"));
        assert_eq!(
            vm.command.as_deref(),
            Some(&["sh".to_owned(), "-c".into(), "echo $GREETING".into()][..])
        );
        assert_eq!(vm.env["GREETING"], "a \"quoted\" value");
        assert_eq!(vm.forward_ports.len(), 1);
        assert_eq!(vm.network.len(), 1, "-p implies user networking");
        let a = args(&["run", "-d", "-e", "X=a\u{7f}b", "--", "true"]);
        let text = detached_spec("web", &a, None).expect("spec");
        let vm = &skiff_spec::parse_file(&text).unwrap_or_else(|e| panic!("{text}\n{e}"))[0];
        assert_eq!(vm.env["X"], "a\u{7f}b");
    }

    #[test]
    fn an_oci_image_keeps_its_entrypoint_and_may_leave_the_service_to_the_daemon() {
        let config = ContainerConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            ..Default::default()
        };
        let a = args(&["run", "-d", "app:1", "--port", "80"]);
        let text = detached_spec("x", &a, Some(&config)).expect("spec");
        let vm = &skiff_spec::parse_file(&text).expect("parses")[0];
        assert_eq!(
            vm.command.as_deref(),
            Some(&["/entry".to_owned(), "--port".into(), "80".into()][..])
        );
        let a = args(&["run", "-d", "app:1"]);
        let text = detached_spec("x", &a, Some(&config)).expect("spec");
        assert!(!text.contains("command"), "{text}");
        let a = args(&["run", "-d", "--image", "base"]);
        let e = detached_spec("x", &a, None)
            .expect_err("no command")
            .to_string();
        assert!(e.contains("no command given"), "{e}");
    }
}
