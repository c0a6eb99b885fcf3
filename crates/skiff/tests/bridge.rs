//! End-to-end tests of managed networks: a real daemon inside a network
//! namespace the test creates, real VMs on real bridges and TAPs, nftables
//! rules in that namespace, and a "remote" host in a second namespace
//! joined by a veth pair. No traffic leaves the test's namespaces.

mod common;

use common::daemon::Daemon;
use common::netns::NetNs;
use common::{stderr, stdout};
use std::process::{Child, Stdio};

/// A guest service answering GET / with its own name.
fn httpd(text: &str) -> String {
    format!("mkdir -p /www && echo {text} > /www/index.html && httpd -f -p 8080 -h /www")
}

/// GET from inside a VM; None if nothing answered within 5 s. (busybox
/// 1.35's `wget -T` crashes after a successful transfer, so the time limit
/// comes from `timeout`.) The exit code must be wget's or timeout's: a VM
/// that is gone or an exec that failed is a test failure, not "no answer".
fn get_from(d: &Daemon, vm: &str, url: &str) -> Option<String> {
    let out = d.cli(&[
        "exec", vm, "--", "timeout", "5", "wget", "-q", "-O", "-", url,
    ]);
    match out.status.code() {
        Some(0) => Some(stdout(&out).trim().to_owned()),
        // wget's "could not connect" or "network unreachable", timeout's
        // 124 (143 when it had to kill).
        Some(1 | 124 | 143) => None,
        code => panic!(
            "exec in {vm} failed ({code:?}): {}\ndaemon log:\n{}",
            stderr(&out),
            d.log()
        ),
    }
}

fn curl(ns: &NetNs, url: &str) -> Option<String> {
    let out = ns
        .command("curl")
        .args(["-sS", "-m", "5", url])
        .output()
        .expect("curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A plain HTTP server in the "remote" namespace; it logs each client.
fn remote_server(remote: &NetNs, dir: &std::path::Path) -> Child {
    std::fs::write(dir.join("index.html"), "remote-ok\n").expect("page");
    remote
        .command("python3")
        .args([
            "-m",
            "http.server",
            "8000",
            "--bind",
            "192.0.2.2",
            "--directory",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("access.log")).expect("log"))
        .spawn()
        .expect("python3 http.server")
}

/// Wait until `host` can connect to the remote server (a bare connection,
/// which the server does not log).
fn wait_for_remote_server(host: &NetNs) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let probe = host
            .command("bash")
            .args(["-c", "exec 3<>/dev/tcp/192.0.2.2/8000"])
            .output()
            .expect("bash");
        if probe.status.success() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the remote server did not come up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn leases(d: &Daemon) -> Vec<(String, String)> {
    let v: serde_json::Value =
        serde_json::from_str(&d.ok(&["network", "ls", "--json"])).expect("json");
    let mut out: Vec<(String, String)> = v
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| n["leases"].as_array().cloned().unwrap_or_default())
        .map(|l| {
            (
                l["vm"].as_str().unwrap_or("").to_owned(),
                l["address"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn networks_connect_isolate_forward_nat_and_clean_up() {
    let host = NetNs::new("h");
    let remote = NetNs::new("r");
    host.link_to(&remote, "192.0.2.1/24", "192.0.2.2/24");
    let mut d = Daemon::start_wrapped(&[], &host.exec_prefix());
    let www = tempfile::tempdir().expect("tempdir");
    let mut server = remote_server(&remote, www.path());
    wait_for_remote_server(&host);

    d.ok(&["network", "create", "lan", "--subnet", "10.90.1.0/24"]);
    d.ok(&[
        "network",
        "create",
        "dmz",
        "--subnet",
        "10.90.2.0/24",
        "--dns",
        "192.0.2.2",
    ]);
    // Errors: each clear, nothing created.
    let bad = d.cli(&["network", "create", "big", "--subnet", "10.90.0.0/16"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("10.90.0.0/16 overlaps network"),
        "{}",
        stderr(&bad)
    );
    assert!(!host.links().iter().any(|l| l == "skb-big"));

    let spec = format!(
        r#"
[vm.web]
network = {{ mode = "bridge", network = "lan" }}
forward_ports = ["127.0.0.1:18080:8080"]
command = "{web}"
[vm.peer]
network = {{ mode = "bridge", network = "lan", address = "10.90.1.50" }}
[vm.other]
network = {{ mode = "bridge", network = "dmz" }}
command = "{other}"
[vm.locked]
network = {{ mode = "bridge", network = "lan", egress = "none" }}
command = "{locked}"
[vm.limited]
network = {{ mode = "bridge", network = "lan", egress = ["198.51.100.0/24"] }}
"#,
        web = httpd("web"),
        other = httpd("other"),
        locked = httpd("locked"),
    );
    let file = d.write_spec("net.toml", &spec);
    d.ok(&["apply", "-f", file.to_str().expect("utf8")]);
    for vm in ["web", "peer", "other", "locked", "limited"] {
        d.ok(&["start", vm]);
    }
    let before = leases(&d);
    let addr = |vm: &str| -> String {
        let found = before.iter().find(|(name, _)| name == vm);
        found.map(|(_, a)| a.clone()).expect("a lease per VM")
    };
    // The fixed address as asked; the others the lowest free, each once.
    assert_eq!(addr("peer"), "10.90.1.50");
    assert_eq!(addr("other"), "10.90.2.2");
    let mut lan: Vec<String> = ["web", "locked", "limited"].map(addr).to_vec();
    lan.sort();
    assert_eq!(lan, ["10.90.1.2", "10.90.1.3", "10.90.1.4"]);
    let web = format!("http://{}:8080/", addr("web"));
    // A fixed address that is taken, or outside the subnet: refused whole.
    let taken = d.write_spec(
        "taken.toml",
        "[vm.dup]\nnetwork = { mode = \"bridge\", network = \"lan\", address = \"10.90.1.50\" }\n",
    );
    let out = d.cli(&["create", "-f", taken.to_str().expect("utf8")]);
    assert!(
        stderr(&out).contains("10.90.1.50 on network \"lan\" is already taken by VM \"peer\""),
        "{}",
        stderr(&out)
    );
    let outside = d.write_spec(
        "outside.toml",
        "[vm.dup]\nnetwork = { mode = \"bridge\", network = \"lan\", address = \"10.90.2.9\" }\n",
    );
    let out = d.cli(&["create", "-f", outside.to_str().expect("utf8")]);
    assert!(
        stderr(&out).contains("10.90.2.9 is not in 10.90.1.0/24"),
        "{}",
        stderr(&out)
    );
    assert!(d.cli(&["inspect", "dup"]).status.code() != Some(0));
    assert_eq!(leases(&d), before);

    // The guest got its address, gateway and DNS from the host.
    let resolv = d.ok(&["exec", "other", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 192.0.2.2"), "{resolv}");

    // Same network: reachable. Another network: not, either way.
    assert_eq!(get_from(&d, "peer", &web).as_deref(), Some("web"));
    assert_eq!(get_from(&d, "other", &web), None);
    assert_eq!(get_from(&d, "peer", "http://10.90.2.2:8080/"), None);
    // The host reaches the guest through the forward and directly.
    assert_eq!(
        curl(&host, "http://127.0.0.1:18080/").as_deref(),
        Some("web")
    );
    assert_eq!(
        curl(&host, "http://10.90.2.2:8080/").as_deref(),
        Some("other")
    );
    // Egress through NAT to the remote host, which sees the host's address.
    assert_eq!(
        get_from(&d, "web", "http://192.0.2.2:8000/").as_deref(),
        Some("remote-ok")
    );
    let log = std::fs::read_to_string(www.path().join("access.log")).unwrap_or_default();
    assert!(log.contains("192.0.2.1"), "remote saw: {log}");
    assert!(!log.contains("10.90."), "NAT did not masquerade: {log}");
    // No egress; egress only to a list that does not include the remote.
    // The locked VM's NIC works (the host reaches its server), so what it
    // cannot reach below is the rule's doing, not a dead link.
    assert_eq!(
        curl(&host, &format!("http://{}:8080/", addr("locked"))).as_deref(),
        Some("locked")
    );
    assert_eq!(get_from(&d, "locked", "http://192.0.2.2:8000/"), None);
    assert_eq!(get_from(&d, "locked", &web), None);
    assert_eq!(get_from(&d, "limited", "http://192.0.2.2:8000/"), None);
    assert_eq!(get_from(&d, "limited", &web).as_deref(), Some("web"));

    // Each TAP is bound to its VM's MAC and address. A guest that takes a
    // new address gets nothing out with it; one that claims a neighbour's
    // address (and says so by ARP) does not get the neighbour's traffic;
    // one that changes its MAC reaches nobody.
    let in_guest = |vm: &str, script: &str| {
        let nic = "nic=$(ls /sys/class/net | grep -v '^lo$' | head -n1)";
        d.ok(&["exec", vm, "--", "sh", "-c", &format!("{nic}; {script}")]);
    };
    in_guest(
        "locked",
        "ip addr add 10.90.1.77/24 dev $nic && ip route replace default via 10.90.1.1 src 10.90.1.77",
    );
    assert_eq!(get_from(&d, "locked", "http://192.0.2.2:8000/"), None);
    let web_ip = addr("web");
    in_guest(
        "locked",
        &format!("ip addr add {web_ip}/32 dev $nic; arping -U -c 2 -w 3 -I $nic -s {web_ip} {web_ip}; true"),
    );
    assert_eq!(
        curl(&host, &format!("http://{web_ip}:8080/")).as_deref(),
        Some("web"),
        "the neighbour's address was stolen"
    );
    in_guest(
        "peer",
        "ip link set $nic down && ip link set $nic address 52:54:00:00:0b:ad && ip link set $nic up",
    );
    assert_eq!(
        get_from(&d, "peer", &web),
        None,
        "a changed MAC got through"
    );
    let log = std::fs::read_to_string(www.path().join("access.log")).unwrap_or_default();
    assert_eq!(
        log.matches("GET").count(),
        1,
        "only web's request reached the remote: {log}"
    );

    // Leases survive a daemon restart; a new VM never gets a leased address.
    d.kill9();
    d.spawn();
    assert_eq!(leases(&d), before);
    assert_eq!(
        curl(&host, "http://127.0.0.1:18080/").as_deref(),
        Some("web"),
        "forward restored"
    );
    let late = d.write_spec(
        "late.toml",
        "[vm.late]\nnetwork = { mode = \"bridge\", network = \"lan\" }\n",
    );
    d.ok(&["create", "-f", late.to_str().expect("utf8")]);
    let after = leases(&d);
    let late_addr = &after
        .iter()
        .find(|(vm, _)| vm == "late")
        .expect("late lease")
        .1;
    assert_eq!(late_addr, "10.90.1.5");

    // `skiff run` on a network: a lease and a TAP for the run only.
    let run = d.cli(&[
        "run", "--net", "lan", "--", "timeout", "5", "wget", "-q", "-O", "-", &web,
    ]);
    assert_eq!(stdout(&run).trim(), "web", "{}", stderr(&run));
    assert_eq!(run.status.code(), Some(0));
    assert!(!leases(&d).iter().any(|(vm, _)| vm.starts_with("run-")));
    let taps = host
        .links()
        .iter()
        .filter(|l| l.starts_with("skt-"))
        .count();
    assert_eq!(taps, 5, "one TAP per running VM, none left by the run");
    let standalone = d.cli(&["run", "--standalone", "--net", "lan", "--", "true"]);
    assert!(
        stderr(&standalone).contains("drop --standalone"),
        "{}",
        stderr(&standalone)
    );

    // A network with VMs cannot go; after rm, nothing of skiff remains.
    let busy = d.cli(&["network", "rm", "lan"]);
    assert!(stderr(&busy).contains("is used by"), "{}", stderr(&busy));
    for vm in ["web", "peer", "other", "locked", "limited", "late"] {
        d.ok(&["rm", "--force", vm]);
    }
    d.ok(&["network", "rm", "lan", "dmz"]);
    assert!(leases(&d).is_empty());
    let links = host.links();
    assert!(
        !links
            .iter()
            .any(|l| l.starts_with("skb-") || l.starts_with("skt-")),
        "left: {links:?}"
    );
    let rules = host.ruleset();
    assert!(!rules.contains("skiff-"), "left: {rules}");
    assert_eq!(d.qemu_count(), 0);
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn prune_removes_leftovers_and_missing_privileges_are_named() {
    let host = NetNs::new("p");
    // Leftovers of a "crashed" run: a skiff bridge and table no daemon knows.
    let mut ip = host.command("ip");
    ip.args(["link", "add", "skb-gone", "type", "bridge"]);
    assert!(ip.status().expect("ip").success());
    let mut nft = host.command("nft");
    nft.args(["add", "table", "ip", "skiff-gone"]);
    assert!(nft.status().expect("nft").success());
    let d = Daemon::start_wrapped(&[], &host.exec_prefix());
    let out = d.ok(&["network", "prune"]);
    assert!(out.contains("removed link skb-gone"), "{out}");
    assert!(out.contains("removed nftables table skiff-gone"), "{out}");
    assert!(!host.links().iter().any(|l| l == "skb-gone"));
    assert!(!host.ruleset().contains("skiff-gone"));
    assert!(d.ok(&["network", "prune"]).contains("nothing to prune"));
    drop(d);

    // Without CAP_NET_ADMIN: a clear error naming it, and nothing created.
    let mut wrapper = host.exec_prefix();
    wrapper.extend(
        [
            "setpriv",
            "--inh-caps=-net_admin",
            "--bounding-set=-net_admin",
            "--",
        ]
        .map(String::from),
    );
    let d = Daemon::start_wrapped(&[], &wrapper);
    let out = d.cli(&["network", "create", "lan", "--subnet", "10.91.0.0/24"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("needs the CAP_NET_ADMIN capability"),
        "{}",
        stderr(&out)
    );
    assert!(!host.links().iter().any(|l| l.starts_with("skb-")));
    assert!(
        d.ok(&["network", "ls"]).lines().count() == 1,
        "only the header"
    );
    let spec = d.write_spec(
        "v.toml",
        "[vm.v]\nnetwork = { mode = \"bridge\", network = \"lan\" }\n",
    );
    let out = d.cli(&["create", "-f", spec.to_str().expect("utf8")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no network named \"lan\""),
        "{}",
        stderr(&out)
    );
}
