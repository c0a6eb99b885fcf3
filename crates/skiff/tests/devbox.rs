//! A real dev box: images/devbox.toml (systemd, sshd, sudo, Docker) booted
//! with the user, key, host name and environment of its spec, reached with
//! the real `ssh` client through a port forward; Docker runs an imported
//! image; /home on a volume outlives the VM; a host store directory is
//! shared read-only. Real VM under QEMU; the image is built with
//! debootstrap (root and a Debian mirror needed).

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

/// sshd may start a moment after the agent reported the system up.
fn ssh_when_up(
    d: &Daemon,
    key: &std::path::Path,
    port: u16,
    command: &str,
) -> std::process::Output {
    let mut login = ssh(key, port, command);
    for _ in 0..30 {
        if login.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        login = ssh(key, port, command);
    }
    assert!(
        login.status.success(),
        "ssh failed: {}\ndaemon log:\n{}\nconsole:\n{}",
        stderr(&login),
        d.log(),
        stdout(&d.cli(&["logs", "dev"]))
    );
    login
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
    // A host store directory, as dev boxes share the host's /nix/store.
    let store_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(store_dir.path().join("hello-2.12"), "from the host store\n").expect("store");
    let store = store_dir.path().display();
    let spec = format!(
        r#"[vm.dev]
memory = 512
disk = {{ image = "devbox", persistent = true }}
init = "system"
hostname = "box-7"
network = "user"
forward_ports = ["127.0.0.1:{port}:22"]
env = {{ GREETING = "hello from the spec" }}
volumes = [{{ name = "dev-home", target = "/home", size = "256M" }}]
shares = [{{ source = "{store}", target = "/nix/store", readonly = true }}]

[[vm.dev.users]]
name = "me"
ssh_authorized_keys = ["{public}"]
sudo = true
"#
    );
    d.boot("dev", &spec);
    let login = ssh_when_up(&d, &key, port, "id -un; hostname; sudo -n id -u");
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

    // The host store is there, and read-only even for root.
    let out = ssh(
        &key,
        port,
        "cat /nix/store/hello-2.12; sudo -n touch /nix/store/x 2>/dev/null && echo WROTE || echo refused",
    );
    assert_eq!(
        stdout(&out),
        "from the host store\nrefused\n",
        "{}",
        stderr(&out)
    );

    // Docker: an image imported from a local tarball (nothing can be
    // pulled here) runs, on Docker's own bridge network; the modules it
    // needs (overlay, bridge, veth, nf_tables) load from skiff's kernel.
    let tarball = docker_tarball(keys.path());
    d.ok(&[
        "cp",
        tarball.to_str().expect("utf8"),
        "dev:/tmp/busybox.tar",
    ]);
    let script = "timeout 240 sh -c 'until docker info >/dev/null 2>&1; do sleep 1; done' && \
                  docker import /tmp/busybox.tar local/busybox >/dev/null && \
                  docker run --rm local/busybox /bin/busybox sh -c 'echo hello from docker; ip -4 -o addr show eth0 | wc -l'";
    let out = d.cli(&["exec", "dev", "--", "sh", "-c", script]);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(0), "hello from docker\n1\n"),
        "{}\nconsole:\n{}",
        stderr(&out),
        stdout(&d.cli(&["logs", "dev"]))
    );
    let out = d.cli(&[
        "exec",
        "dev",
        "--",
        "sh",
        "-c",
        "lsmod | cut -d ' ' -f 1 | grep -c -x -e overlay -e bridge -e veth",
    ]);
    assert_eq!(stdout(&out), "3\n", "{}", stderr(&out));
    // They came from the read-only modules drive, which root cannot change.
    let out = ssh(
        &key,
        port,
        "findmnt -n -o OPTIONS /lib/modules/$(uname -r) | cut -d , -f 1; sudo -n touch /lib/modules/$(uname -r)/x 2>/dev/null && echo WROTE || echo refused",
    );
    assert_eq!(stdout(&out), "ro\nrefused\n", "{}", stderr(&out));

    // /home is a volume: the VM removed and made again (a new root layer),
    // the user's files are still there.
    let out = ssh(&key, port, "echo kept > ~/keep && sync");
    assert!(out.status.success(), "{}", stderr(&out));
    d.ok(&["rm", "-f", "dev"]);
    assert_eq!(d.qemu_count(), 0);
    d.boot("dev", &spec);
    let out = ssh_when_up(&d, &key, port, "cat ~/keep; id -un");
    assert_eq!(stdout(&out), "kept\nme\n", "{}", stderr(&out));
    d.ok(&["rm", "-f", "--volumes", "dev"]);
    assert_eq!(d.qemu_count(), 0);
}

/// A container image as a tarball of a root filesystem: static busybox.
fn docker_tarball(dir: &std::path::Path) -> std::path::PathBuf {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| p.exists())
        .expect("busybox-static (scripts/setup.sh installs it)");
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).expect("rootfs");
    std::fs::copy(busybox, root.join("bin/busybox")).expect("busybox");
    let tarball = dir.join("busybox.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .output()
        .expect("tar");
    assert!(out.status.success(), "{}", stderr(&out));
    tarball
}
