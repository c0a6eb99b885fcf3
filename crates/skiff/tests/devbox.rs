//! A real dev box: images/devbox.toml (systemd, sshd, sudo) booted with the
//! user, key, host name and environment of its spec, reached with the real
//! `ssh` client through a port forward. Real VM under QEMU; the image is
//! built with debootstrap (root and a Debian mirror needed).

mod common;

use common::daemon::Daemon;
use common::{stderr, stdout};
use std::process::Command;

fn recipe(name: &str) -> String {
    format!("{}/../../images/{name}.toml", env!("CARGO_MANIFEST_DIR"))
}

fn keygen(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "me@test", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "{}", stderr(&out));
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    (key, public.trim().to_owned())
}

fn ssh(key: &std::path::Path, port: u16, command: &str) -> std::process::Output {
    Command::new("ssh")
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=20",
            "-i",
        ])
        .arg(key)
        .args(["-p", &port.to_string(), "me@127.0.0.1", command])
        .output()
        .expect("ssh")
}

#[test]
fn a_dev_box_takes_ssh_logins_with_the_spec_s_user_key_and_name() {
    let d = Daemon::start();
    d.ok(&["image", "build", "-f", &recipe("devbox")]);
    let keys = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(keys.path(), "me");
    let (stranger, _) = keygen(keys.path(), "stranger");
    let port = common::free_port();
    let spec = format!(
        r#"[vm.dev]
memory = 512
disk = {{ image = "devbox", persistent = true }}
init = "system"
hostname = "box-7"
network = "user"
forward_ports = ["127.0.0.1:{port}:22"]
env = {{ GREETING = "hello from the spec" }}

[[vm.dev.users]]
name = "me"
ssh_authorized_keys = ["{public}"]
sudo = true
"#
    );
    d.boot("dev", &spec);

    // sshd may start a moment after the agent reported the system up.
    let mut login = ssh(&key, port, "id -un; hostname; sudo -n id -u");
    for _ in 0..30 {
        if login.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        login = ssh(&key, port, "id -un; hostname; sudo -n id -u");
    }
    assert!(
        login.status.success(),
        "ssh failed: {}\ndaemon log:\n{}\nconsole:\n{}",
        stderr(&login),
        d.log(),
        stdout(&d.cli(&["logs", "dev"]))
    );
    assert_eq!(stdout(&login), "me\nbox-7\n0\n");
    assert_eq!(
        stderr(&login),
        "",
        "the host name resolves (sudo says nothing)"
    );
    // Another key is refused.
    let refused = ssh(&stranger, port, "true");
    assert_eq!(refused.status.code(), Some(255), "{}", stderr(&refused));
    // Its own host keys, made at its first boot (none are in the image).
    let out = d.cli(&[
        "exec",
        "dev",
        "--",
        "sh",
        "-c",
        "ls /etc/ssh/ssh_host_ed25519_key",
    ]);
    assert_eq!(
        stdout(&out),
        "/etc/ssh/ssh_host_ed25519_key\n",
        "{}",
        stderr(&out)
    );
    // The spec's env reaches exec, under the request's own.
    let out = d.cli(&["exec", "dev", "--", "sh", "-c", "echo $GREETING"]);
    assert_eq!(stdout(&out), "hello from the spec\n", "{}", stderr(&out));
    let out = d.cli(&[
        "exec",
        "-e",
        "GREETING=mine",
        "dev",
        "--",
        "sh",
        "-c",
        "echo $GREETING",
    ]);
    assert_eq!(stdout(&out), "mine\n", "{}", stderr(&out));
    // The key and its permissions as sshd wants them.
    let out = d.cli(&[
        "exec",
        "dev",
        "--",
        "stat",
        "-c",
        "%U %a",
        "/home/me/.ssh",
        "/home/me/.ssh/authorized_keys",
    ]);
    assert_eq!(stdout(&out), "me 700\nme 600\n", "{}", stderr(&out));
    d.ok(&["rm", "-f", "dev"]);
    assert_eq!(d.qemu_count(), 0);
}
