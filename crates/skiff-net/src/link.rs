//! Bridges and TAPs: created, wired and removed through netlink (and the
//! tun driver's ioctls for the TAP itself, which netlink cannot create).

use crate::NetError;
use futures_util::stream::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

/// A netlink connection in the current network namespace.
pub struct Netlink {
    handle: Handle,
}

fn permission_or(what: &str, source: rtnetlink::Error) -> NetError {
    if let rtnetlink::Error::NetlinkError(m) = &source {
        if m.raw_code().abs() == libc::EPERM {
            return NetError::Permission {
                what: what.to_owned(),
            };
        }
    }
    NetError::Netlink {
        what: what.to_owned(),
        source,
    }
}

fn name_of(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

impl Netlink {
    /// Open a connection; its worker runs on the current tokio runtime.
    pub fn connect() -> Result<Netlink, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetError::Io {
            what: "cannot open a netlink socket".into(),
            source,
        })?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The index of the link called `name`, if there is one.
    pub async fn index_of(&self, name: &str) -> Result<Option<u32>, NetError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(msg.header.index)),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::ENODEV => {
                Ok(None)
            }
            Err(e) => Err(permission_or(&format!("look up link {name}"), e)),
        }
    }

    /// Names of all links starting with `prefix`.
    pub async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<String>, NetError> {
        let mut links = self.handle.link().get().execute();
        let mut names = Vec::new();
        while let Some(msg) = links
            .try_next()
            .await
            .map_err(|e| permission_or("list links", e))?
        {
            if let Some(n) = name_of(&msg).filter(|n| n.starts_with(prefix)) {
                names.push(n.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Create bridge `name` with `gateway/prefix` on it, up. If any step
    /// fails the bridge is removed again.
    pub async fn create_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetError> {
        let what = format!("create bridge {name}");
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(|e| permission_or(&what, e))?;
        let configured = async {
            let index = self.index_of(name).await?.ok_or_else(|| NetError::Io {
                what: what.clone(),
                source: std::io::Error::other("the new bridge vanished"),
            })?;
            self.handle
                .address()
                .add(index, IpAddr::V4(gateway), prefix)
                .execute()
                .await
                .map_err(|e| permission_or(&format!("put {gateway}/{prefix} on {name}"), e))?;
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(|e| permission_or(&format!("bring {name} up"), e))
        }
        .await;
        if configured.is_err() {
            let _ = self.delete_link(name).await;
        }
        configured
    }

    /// Put `tap` on `bridge` and bring it up.
    pub async fn attach(&self, tap: &str, bridge: &str) -> Result<(), NetError> {
        let missing = |n: &str| NetError::Io {
            what: format!("attach {tap} to {bridge}"),
            source: std::io::Error::other(format!("there is no link {n}")),
        };
        let tap_index = self.index_of(tap).await?.ok_or_else(|| missing(tap))?;
        let bridge_index = self
            .index_of(bridge)
            .await?
            .ok_or_else(|| missing(bridge))?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(tap_index)
                    .controller(bridge_index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| permission_or(&format!("attach {tap} to {bridge}"), e))
    }

    /// Remove link `name`; `false` if there was none.
    pub async fn delete_link(&self, name: &str) -> Result<bool, NetError> {
        let Some(index) = self.index_of(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::ENODEV => {
                Ok(false)
            }
            Err(e) => Err(permission_or(&format!("remove link {name}"), e)),
        }
    }
}

// _IOW('T', 202, int) and _IOW('T', 203, int) from <linux/if_tun.h>.
nix::ioctl_write_ptr_bad!(
    tun_set_iff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<libc::c_int>()),
    libc::ifreq
);
nix::ioctl_write_int_bad!(
    tun_set_persist,
    nix::request_code_write!(b'T', 203, std::mem::size_of::<libc::c_int>())
);

/// Create a persistent TAP device `name` (down, on no bridge). It outlives
/// this process; QEMU opens it by name, [`Netlink::delete_link`] removes it.
pub fn create_tap(name: &str) -> Result<(), NetError> {
    let what = format!("create TAP {name}");
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(NetError::Io {
            what,
            source: std::io::Error::other("interface names have 1 to 15 bytes"),
        });
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|source| NetError::Io {
            what: format!("{what}: cannot open /dev/net/tun (is the tun module loaded?)"),
            source,
        })?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: `tun` is an open tun control file and `req` a valid ifreq
    // that outlives the call; TUNSETIFF only reads and writes within it.
    unsafe { tun_set_iff(tun.as_raw_fd(), &req) }.map_err(|errno| match errno {
        nix::errno::Errno::EPERM => NetError::Permission { what: what.clone() },
        e => NetError::Io {
            what: what.clone(),
            source: e.into(),
        },
    })?;
    // SAFETY: the file descriptor is the tun file just bound to the device;
    // TUNSETPERSIST takes its argument by value.
    unsafe { tun_set_persist(tun.as_raw_fd(), 1) }.map_err(|e| NetError::Io {
        what: format!("{what}: make it persistent"),
        source: e.into(),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_and_tap_are_created_wired_and_removed() {
        crate::netns_test::in_new_netns("bridge_and_tap_are_created_wired_and_removed", || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let nl = Netlink::connect().expect("netlink");
                nl.create_bridge("skb-t", "10.66.0.1".parse().expect("ip"), 24)
                    .await
                    .expect("bridge");
                create_tap("skt-t1").expect("tap");
                nl.attach("skt-t1", "skb-t").await.expect("attach");
                assert_eq!(
                    nl.links_with_prefix("sk").await.expect("list"),
                    ["skb-t", "skt-t1"]
                );
                // The address is on the bridge: a socket can bind to it.
                std::net::TcpListener::bind("10.66.0.1:0").expect("gateway address is local");
                let again = nl
                    .create_bridge("skb-t", "10.66.0.1".parse().expect("ip"), 24)
                    .await;
                assert!(again
                    .expect_err("duplicate")
                    .to_string()
                    .contains("create bridge skb-t"));
                assert!(nl.delete_link("skt-t1").await.expect("rm tap"));
                assert!(nl.delete_link("skb-t").await.expect("rm bridge"));
                assert!(!nl.delete_link("skb-t").await.expect("rm again"));
                assert!(nl.links_with_prefix("sk").await.expect("list").is_empty());
                let e = nl
                    .attach("skt-none", "skb-t")
                    .await
                    .expect_err("no such tap");
                assert!(e.to_string().contains("there is no link skt-none"), "{e}");
            });
        });
    }
}
