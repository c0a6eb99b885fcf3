//! QEMU user-mode networking (slirp): no privileges, NAT to the host's
//! network, port forwards from the host. The guest's address is fixed and
//! passed on the kernel command line, so it needs no DHCP client.

use std::net::IpAddr;

/// The guest's side of QEMU's default user-mode network.
pub const GUEST_ADDR: &str = "10.0.2.15/24";
pub const GATEWAY: &str = "10.0.2.2";
pub const DNS: &str = "10.0.2.3";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// Host address:port to guest port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub proto: Proto,
    pub host_addr: IpAddr,
    pub host_port: u16,
    pub guest_port: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserNet {
    pub forwards: Vec<Forward>,
    /// Cut the guest off from the host and the outside (`restrict=on`);
    /// port forwards into the guest still work.
    pub no_egress: bool,
}

impl UserNet {
    /// The `-netdev`/`-device` arguments.
    pub fn qemu_args(&self, mac: &str) -> Vec<String> {
        let mut netdev = String::from("user,id=net0");
        if self.no_egress {
            netdev.push_str(",restrict=on");
        }
        for f in &self.forwards {
            let proto = match f.proto {
                Proto::Tcp => "tcp",
                Proto::Udp => "udp",
            };
            let addr = match f.host_addr {
                IpAddr::V4(a) => a.to_string(),
                IpAddr::V6(a) => format!("[{a}]"),
            };
            netdev.push_str(&format!(
                ",hostfwd={proto}:{addr}:{}-:{}",
                f.host_port, f.guest_port
            ));
        }
        vec![
            "-netdev".into(),
            netdev,
            "-device".into(),
            format!("virtio-net-device,netdev=net0,mac={mac}"),
        ]
    }

    /// Check that every host port can be bound now, for a clear error
    /// instead of QEMU's. (Another process may still take one before QEMU
    /// starts; QEMU's own error covers that.)
    pub fn check_host_ports(&self) -> Result<(), PortInUse> {
        for f in &self.forwards {
            let addr = std::net::SocketAddr::new(f.host_addr, f.host_port);
            let bound = match f.proto {
                Proto::Tcp => std::net::TcpListener::bind(addr).map(drop),
                Proto::Udp => std::net::UdpSocket::bind(addr).map(drop),
            };
            if let Err(source) = bound {
                let proto = if f.proto == Proto::Tcp { "tcp" } else { "udp" };
                return Err(PortInUse {
                    addr,
                    proto,
                    source,
                });
            }
        }
        Ok(())
    }

    /// What the agent reads to configure eth0, and the module group it loads.
    pub fn kernel_args() -> Vec<String> {
        vec![
            "skiff.load=net".into(),
            format!("skiff.ip={GUEST_ADDR}"),
            format!("skiff.gw={GATEWAY}"),
            format!("skiff.dns={DNS}"),
        ]
    }
}

/// A host port a forward needs cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot forward host port {addr}/{proto} to the guest (choose another host port)")]
pub struct PortInUse {
    pub addr: std::net::SocketAddr,
    pub proto: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// A locally administered unicast MAC derived from a VM id, stable for the VM.
pub fn mac_for(id: &str) -> String {
    // FNV-1a over the id: stable across runs and versions, no extra crate.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    // 0x52 0x54 is QEMU's prefix with the locally-administered bit set.
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_become_hostfwd_rules() {
        let net = UserNet {
            forwards: vec![
                Forward {
                    proto: Proto::Tcp,
                    host_addr: "127.0.0.1".parse().expect("ip"),
                    host_port: 8080,
                    guest_port: 80,
                },
                Forward {
                    proto: Proto::Udp,
                    host_addr: "::1".parse().expect("ip"),
                    host_port: 5353,
                    guest_port: 53,
                },
            ],
            no_egress: false,
        };
        assert_eq!(
            net.qemu_args("52:54:00:00:00:01"),
            [
                "-netdev",
                "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:[::1]:5353-:53",
                "-device",
                "virtio-net-device,netdev=net0,mac=52:54:00:00:00:01"
            ]
        );
    }

    #[test]
    fn a_taken_host_port_is_reported_with_its_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let net = UserNet {
            forwards: vec![Forward {
                proto: Proto::Tcp,
                host_addr: "127.0.0.1".parse().expect("ip"),
                host_port: port,
                guest_port: 80,
            }],
            no_egress: false,
        };
        let err = net.check_host_ports().expect_err("taken");
        let err = format!("{err}: {}", err.source);
        assert!(
            err.contains(&format!("127.0.0.1:{port}/tcp")) && err.contains("in use"),
            "{err}"
        );
        drop(taken);
        assert!(net.check_host_ports().is_ok());
    }

    #[test]
    fn no_egress_restricts_the_user_network() {
        let net = UserNet {
            forwards: Vec::new(),
            no_egress: true,
        };
        assert_eq!(
            net.qemu_args("52:54:00:00:00:01")[1],
            "user,id=net0,restrict=on"
        );
    }

    #[test]
    fn the_mac_is_stable_per_vm_and_differs_between_vms() {
        assert_eq!(mac_for("abc"), mac_for("abc"));
        assert_ne!(mac_for("abc"), mac_for("abd"));
        assert!(mac_for("x").starts_with("52:54:"));
        assert_eq!(mac_for("x").len(), 17);
    }
}
