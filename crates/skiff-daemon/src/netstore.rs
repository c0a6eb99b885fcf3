//! Networks and address leases in the state database. A lease belongs to a
//! VM from its creation to its removal, so a VM keeps its address across
//! restarts of itself and of the daemon, and no address is handed out twice
//! (the table's primary key guarantees it).

use crate::store::{now, Store, StoreError};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use skiff_net::{NetError, Subnet};
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Serialize)]
pub struct NetworkRecord {
    pub name: String,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub dns: Option<Ipv4Addr>,
    pub created_at: i64,
    /// VM name and address, in address order.
    pub leases: Vec<Lease>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Lease {
    pub network: String,
    pub address: Ipv4Addr,
    pub vm: String,
}

impl From<NetworkRecord> for skiff_api::Network {
    fn from(n: NetworkRecord) -> skiff_api::Network {
        skiff_api::Network {
            subnet: n.subnet.to_string(),
            name: n.name,
            gateway: n.gateway,
            bridge: n.bridge,
            dns: n.dns,
            created_at: n.created_at,
            leases: n
                .leases
                .into_iter()
                .map(|l| skiff_api::Lease {
                    network: l.network,
                    address: l.address,
                    vm: l.vm,
                })
                .collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "no network named {0:?}; create it with `skiff network create {0} --subnet 10.88.0.0/24`"
    )]
    NoNetwork(String),
    #[error("{address} on network {network:?} is already taken by VM {vm:?}; choose another address or leave it out")]
    Taken {
        network: String,
        address: Ipv4Addr,
        vm: String,
    },
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for LeaseError {
    fn from(e: rusqlite::Error) -> Self {
        LeaseError::Store(StoreError::Sql(e))
    }
}

fn parse_ip(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

impl Store {
    pub fn insert_network(
        &self,
        name: &str,
        subnet: Subnet,
        dns: Option<Ipv4Addr>,
    ) -> Result<(), StoreError> {
        let res = self.conn().execute(
            "INSERT INTO networks (name, subnet, dns, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, subnet.to_string(), dns.map(|d| d.to_string()), now()],
        );
        match res {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::Exists(name.to_owned()))
            }
            other => other.map(drop).map_err(StoreError::from),
        }
    }

    pub fn networks(&self) -> Result<Vec<NetworkRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT name, subnet, dns, created_at FROM networks ORDER BY name")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        drop(stmt);
        drop(conn);
        let leases = self.leases()?;
        Ok(rows
            .into_iter()
            // A subnet that does not parse can only come from a newer skiff.
            .filter_map(|(name, subnet, dns, created_at)| {
                let subnet: Subnet = subnet.parse().ok()?;
                Some(NetworkRecord {
                    gateway: subnet.gateway(),
                    bridge: skiff_net::bridge_name(&name),
                    leases: leases
                        .iter()
                        .filter(|l| l.network == name)
                        .cloned()
                        .collect(),
                    name,
                    subnet,
                    dns: dns.as_deref().and_then(parse_ip),
                    created_at,
                })
            })
            .collect())
    }

    pub fn network(&self, name: &str) -> Result<Option<NetworkRecord>, StoreError> {
        Ok(self.networks()?.into_iter().find(|n| n.name == name))
    }

    pub fn delete_network(&self, name: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM networks WHERE name = ?1", [name])?;
        Ok(())
    }

    /// All leases, in network and address order.
    pub fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT network, address, vm FROM leases")?;
        let mut leases: Vec<Lease> = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?
            .filter_map(|row| {
                let (network, address, vm) = row.ok()?;
                Some(Lease {
                    network,
                    address: parse_ip(&address)?,
                    vm,
                })
            })
            .collect();
        leases.sort_by_key(|l| (l.network.clone(), u32::from(l.address)));
        Ok(leases)
    }

    /// The VM's lease on `network`, taking one if it has none: `fixed` if
    /// given (and free), else the lowest free address. One transaction.
    pub fn lease(
        &self,
        vm: &str,
        network: &str,
        fixed: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, LeaseError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let subnet: Subnet = tx
            .query_row(
                "SELECT subnet FROM networks WHERE name = ?1",
                [network],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .ok_or_else(|| LeaseError::NoNetwork(network.to_owned()))?
            .parse()?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT address FROM leases WHERE network = ?1 AND vm = ?2",
                [network, vm],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(addr) = existing.as_deref().and_then(parse_ip) {
            if fixed.is_none_or(|f| f == addr) {
                return Ok(addr);
            }
            tx.execute(
                "DELETE FROM leases WHERE network = ?1 AND vm = ?2",
                [network, vm],
            )?;
        }
        let taken: Vec<(Ipv4Addr, String)> = {
            let mut stmt = tx.prepare("SELECT address, vm FROM leases WHERE network = ?1")?;
            let rows = stmt
                .query_map([network], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?
                .filter_map(|row| row.ok())
                .filter_map(|(a, v)| Some((parse_ip(&a)?, v)))
                .collect();
            rows
        };
        let address = match fixed {
            Some(addr) => {
                subnet.check_vm_address(addr)?;
                if let Some((_, owner)) = taken.iter().find(|(a, _)| *a == addr) {
                    return Err(LeaseError::Taken {
                        network: network.to_owned(),
                        address: addr,
                        vm: owner.clone(),
                    });
                }
                addr
            }
            None => {
                let addrs: Vec<Ipv4Addr> = taken.iter().map(|(a, _)| *a).collect();
                subnet.next_free(&addrs)?
            }
        };
        tx.execute(
            "INSERT INTO leases (network, address, vm) VALUES (?1, ?2, ?3)",
            params![network, address.to_string(), vm],
        )?;
        tx.commit()?;
        Ok(address)
    }

    /// Give back every lease of a VM except those on `keep`.
    pub fn release_leases(&self, vm: &str, keep: &[&str]) -> Result<(), StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT network FROM leases WHERE vm = ?1")?;
        let networks: Vec<String> = stmt
            .query_map([vm], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        for n in networks.iter().filter(|n| !keep.contains(&n.as_str())) {
            conn.execute(
                "DELETE FROM leases WHERE vm = ?1 AND network = ?2",
                [vm, n.as_str()],
            )?;
        }
        Ok(())
    }

    /// Remove leases whose VM no longer exists; returns how many.
    pub fn drop_orphan_leases(&self) -> Result<usize, StoreError> {
        Ok(self.conn().execute(
            "DELETE FROM leases WHERE vm NOT IN (SELECT name FROM vms) AND vm NOT LIKE 'run-%'",
            [],
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn leases_are_unique_stable_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("s.db");
        {
            let s = Store::open(&db).expect("open");
            s.insert_network("lan", "10.9.0.0/29".parse().expect("subnet"), None)
                .expect("network");
            assert!(matches!(
                s.insert_network("lan", "10.8.0.0/24".parse().expect("subnet"), None),
                Err(StoreError::Exists(_))
            ));
            assert_eq!(s.lease("a", "lan", None).expect("a"), ip("10.9.0.2"));
            assert_eq!(
                s.lease("b", "lan", Some(ip("10.9.0.5"))).expect("b"),
                ip("10.9.0.5")
            );
            // Asking again gives the same address.
            assert_eq!(s.lease("a", "lan", None).expect("a again"), ip("10.9.0.2"));
            let e = s
                .lease("c", "lan", Some(ip("10.9.0.5")))
                .expect_err("taken");
            assert!(e.to_string().contains("already taken by VM \"b\""), "{e}");
            let e = s
                .lease("c", "lan", Some(ip("10.9.1.5")))
                .expect_err("outside");
            assert!(e.to_string().contains("not in 10.9.0.0/29"), "{e}");
            let e = s.lease("c", "nope", None).expect_err("no network");
            assert!(e.to_string().contains("skiff network create nope"), "{e}");
        }
        let s = Store::open(&db).expect("reopen");
        let leases = s.leases().expect("leases");
        assert_eq!(leases.len(), 2);
        assert_eq!(s.lease("c", "lan", None).expect("c"), ip("10.9.0.3"));
        s.lease("d", "lan", None).expect("d");
        s.lease("e", "lan", None).expect("e");
        let e = s.lease("f", "lan", None).expect_err("full");
        assert!(
            e.to_string().contains("no free address in 10.9.0.0/29"),
            "{e}"
        );
        s.release_leases("a", &[]).expect("release");
        assert_eq!(s.lease("f", "lan", None).expect("f"), ip("10.9.0.2"));
        let net = s.network("lan").expect("get").expect("exists");
        assert_eq!(net.leases.len(), 5);
        assert_eq!(net.gateway, ip("10.9.0.1"));
        assert_eq!(net.bridge, "skb-lan");
    }
}
