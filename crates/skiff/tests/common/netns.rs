//! Network namespaces that a test creates and deletes, so that bridges,
//! rules and traffic never touch the host's own network.

use std::process::Command;

pub struct NetNs {
    pub name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// A fresh namespace with loopback up.
    pub fn new(tag: &str) -> NetNs {
        let name = format!("skt{tag}{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        NetNs { name }
    }

    /// Connect two namespaces with a veth pair: `self` gets `addr_here`,
    /// `other` gets `addr_there` (both with their prefix, like 192.0.2.1/24).
    pub fn link_to(&self, other: &NetNs, addr_here: &str, addr_there: &str) {
        let (a, b) = ("vtest0", "vtest1");
        ip(&[
            "-n",
            &self.name,
            "link",
            "add",
            a,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            &other.name,
        ]);
        ip(&["-n", &self.name, "addr", "add", addr_here, "dev", a]);
        ip(&["-n", &other.name, "addr", "add", addr_there, "dev", b]);
        ip(&["-n", &self.name, "link", "set", a, "up"]);
        ip(&["-n", &other.name, "link", "set", b, "up"]);
    }

    /// The command prefix that runs a program in this namespace.
    pub fn exec_prefix(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }

    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Names of the links in the namespace (from the kernel's sysfs view,
    /// read in the namespace).
    pub fn links(&self) -> Vec<String> {
        let out = self
            .command("ls")
            .arg("/sys/class/net")
            .output()
            .expect("ls");
        // An empty answer from a failed listing would read as "nothing left".
        assert!(
            out.status.success(),
            "listing the links of {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// The namespace's nftables rule set, as nft prints it.
    pub fn ruleset(&self) -> String {
        let out = self
            .command("nft")
            .args(["list", "ruleset"])
            .output()
            .expect("nft");
        assert!(
            out.status.success(),
            "listing the rules of {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
