//! IPv4 subnets and address allocation. Pure: the daemon keeps the leases
//! (in SQLite) and asks these functions which address comes next.

use crate::NetError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 subnet: its network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

/// Smallest and largest prefix a skiff network may have: /30 leaves two
/// addresses (gateway and one VM); /8 is already absurdly many.
pub const MIN_PREFIX: u8 = 8;
pub const MAX_PREFIX: u8 = 30;

impl Subnet {
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    fn broadcast(&self) -> u32 {
        u32::from(self.network) | !self.mask()
    }

    /// The host's address on the bridge: the first one in the subnet.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.network)
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// Whether a VM may have `addr`: inside, and neither the network,
    /// broadcast nor gateway address.
    pub fn check_vm_address(&self, addr: Ipv4Addr) -> Result<(), NetError> {
        let a = u32::from(addr);
        if !self.contains(addr) {
            return Err(NetError::AddressOutside {
                address: addr,
                subnet: *self,
            });
        }
        if a == u32::from(self.network) || a == self.broadcast() || addr == self.gateway() {
            return Err(NetError::AddressReserved {
                address: addr,
                subnet: *self,
            });
        }
        Ok(())
    }

    /// The lowest VM address not in `taken`, or `PoolExhausted`.
    pub fn next_free(&self, taken: &[Ipv4Addr]) -> Result<Ipv4Addr, NetError> {
        let first = u32::from(self.gateway()) + 1;
        (first..self.broadcast())
            .map(Ipv4Addr::from)
            .find(|a| !taken.contains(a))
            .ok_or(NetError::PoolExhausted {
                subnet: *self,
                leased: taken.len(),
            })
    }

    /// How many addresses VMs can have.
    pub fn capacity(&self) -> u32 {
        self.broadcast() - u32::from(self.gateway()) - 1
    }
}

impl FromStr for Subnet {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = |why: String| NetError::BadSubnet {
            input: s.to_owned(),
            why,
        };
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| bad("write it as ADDRESS/PREFIX, like 10.88.0.0/24".into()))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| bad(format!("{addr:?} is not an IPv4 address")))?;
        let prefix: u8 = len
            .parse()
            .map_err(|_| bad(format!("{len:?} is not a prefix length")))?;
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(bad(format!(
                "the prefix must be from /{MIN_PREFIX} to /{MAX_PREFIX}"
            )));
        }
        let subnet = Subnet {
            network: addr,
            prefix,
        };
        let aligned = Ipv4Addr::from(u32::from(addr) & subnet.mask());
        if aligned != addr {
            return Err(bad(format!(
                "{addr} has host bits set; did you mean {aligned}/{prefix}?"
            )));
        }
        Ok(subnet)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl TryFrom<String> for Subnet {
    type Error = NetError;
    fn try_from(s: String) -> Result<Self, NetError> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Subnet {
        s.parse().expect("valid subnet")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("valid address")
    }

    #[test]
    fn parses_and_rejects_with_the_reason() {
        let n = net("10.88.0.0/24");
        assert_eq!(n.gateway(), ip("10.88.0.1"));
        assert_eq!(n.capacity(), 253);
        assert_eq!(n.to_string(), "10.88.0.0/24");
        let err = |s: &str| s.parse::<Subnet>().expect_err(s).to_string();
        assert!(err("10.88.0.5/24").contains("did you mean 10.88.0.0/24?"));
        assert!(err("10.88.0.0").contains("ADDRESS/PREFIX"));
        assert!(err("10.88.0.0/31").contains("from /8 to /30"));
        assert!(err("10.888.0.0/24").contains("not an IPv4 address"));
        assert!(err("10.88.0.0/x").contains("not a prefix length"));
    }

    #[test]
    fn overlap_is_symmetric_and_exact() {
        assert!(net("10.88.0.0/16").overlaps(&net("10.88.5.0/24")));
        assert!(net("10.88.5.0/24").overlaps(&net("10.88.0.0/16")));
        assert!(!net("10.88.0.0/24").overlaps(&net("10.88.1.0/24")));
        assert!(net("10.88.0.0/24").overlaps(&net("10.88.0.0/24")));
    }

    #[test]
    fn allocation_skips_taken_and_reserved_addresses_and_ends() {
        let n = net("10.9.0.0/29"); // .1 gateway, .2-.6 for VMs, .7 broadcast
        assert_eq!(n.next_free(&[]).expect("free"), ip("10.9.0.2"));
        assert_eq!(
            n.next_free(&[ip("10.9.0.2"), ip("10.9.0.4")])
                .expect("free"),
            ip("10.9.0.3")
        );
        let all: Vec<_> = (2..=6).map(|i| Ipv4Addr::new(10, 9, 0, i)).collect();
        let e = n.next_free(&all).expect_err("exhausted").to_string();
        assert!(e.contains("no free address in 10.9.0.0/29"), "{e}");
        assert!(n.check_vm_address(ip("10.9.0.6")).is_ok());
        for reserved in ["10.9.0.0", "10.9.0.1", "10.9.0.7"] {
            let e = n.check_vm_address(ip(reserved)).expect_err(reserved);
            assert!(e.to_string().contains("reserved"), "{e}");
        }
        let e = n.check_vm_address(ip("10.9.0.8")).expect_err("outside");
        assert!(e.to_string().contains("not in 10.9.0.0/29"), "{e}");
    }
}
