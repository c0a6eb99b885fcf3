//! The network sections of a spec: interfaces and port forwards.

use super::{expect_str, expect_table, table_items, type_name, Errs, Fields};
use crate::{check_name, Egress, NetMode, NetworkSpec, PortForward, Protocol};
use std::net::{IpAddr, Ipv4Addr};
use toml::Value;

pub(super) fn networks(v: &Value, p: &str, errs: &mut Errs) -> Vec<NetworkSpec> {
    let tables: Vec<(String, toml::Table)> = match v {
        // `network = "user"` is short for one interface of that mode.
        Value::String(mode) => {
            let mut t = toml::Table::new();
            t.insert("mode".into(), Value::String(mode.clone()));
            vec![(p.to_owned(), t)]
        }
        Value::Table(t) => vec![(p.to_owned(), t.clone())],
        other => table_items(other, p, "network", errs)
            .into_iter()
            .map(|(ip, t)| (ip, t.clone()))
            .collect(),
    };
    let mut out: Vec<NetworkSpec> = Vec::new();
    for (ip, t) in &tables {
        let mut f = Fields::new(t, ip);
        let mode = match f
            .get("mode")
            .map(|v| (v, expect_str(v, &format!("{ip}.mode"), errs)))
        {
            Some((_, Some("none"))) => Some(NetMode::None),
            Some((_, Some("user"))) => Some(NetMode::User),
            Some((_, Some("bridge"))) => Some(NetMode::Bridge),
            Some((_, Some(other))) => {
                errs.push(
                    &format!("{ip}.mode"),
                    format!("unknown mode {other:?}; allowed: \"none\", \"user\", \"bridge\""),
                );
                None
            }
            Some((_, None)) => None,
            None => {
                errs.push(
                    &format!("{ip}.mode"),
                    "missing; allowed: \"none\", \"user\", \"bridge\"",
                );
                None
            }
        };
        let network = f.string("network", errs);
        let address = f
            .get("address")
            .and_then(|v| expect_str(v, &format!("{ip}.address"), errs))
            .and_then(|s| {
                s.parse::<Ipv4Addr>()
                    .map_err(|_| {
                        errs.push(
                            &format!("{ip}.address"),
                            format!("{s:?} is not an IPv4 address"),
                        )
                    })
                    .ok()
            });
        let egress = match f.get("egress") {
            None => Egress::All,
            Some(Value::String(s)) if s == "all" => Egress::All,
            Some(Value::String(s)) if s == "none" => Egress::None,
            Some(Value::Array(items)) => {
                let mut cidrs = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let cp = format!("{ip}.egress[{i}]");
                    if let Some(s) = expect_str(item, &cp, errs) {
                        match check_cidr(s) {
                            Ok(()) => cidrs.push(s.to_owned()),
                            Err(e) => errs.push(&cp, e),
                        }
                    }
                }
                Egress::Cidrs(cidrs)
            }
            Some(other) => {
                errs.push(
                    &format!("{ip}.egress"),
                    format!(
                        "expected \"all\", \"none\" or an array of CIDRs, found {}",
                        describe(other)
                    ),
                );
                Egress::All
            }
        };
        f.finish(&["mode", "network", "address", "egress"], errs);
        let Some(mode) = mode else { continue };
        match mode {
            NetMode::Bridge => match &network {
                None => errs.push(
                    &format!("{ip}.network"),
                    "bridge mode needs the name of a skiff network (skiff network create NAME)",
                ),
                Some(n) => {
                    if let Err(e) = check_name(n) {
                        errs.push(&format!("{ip}.network"), e);
                    }
                }
            },
            NetMode::User | NetMode::None => {
                if network.is_some() {
                    errs.push(
                        &format!("{ip}.network"),
                        "only bridge mode joins a named network",
                    );
                }
                if address.is_some() {
                    errs.push(
                        &format!("{ip}.address"),
                        "a fixed address needs bridge mode",
                    );
                }
            }
        }
        if mode == NetMode::None && tables.len() > 1 {
            errs.push(
                &format!("{ip}.mode"),
                "\"none\" cannot be combined with other interfaces",
            );
        }
        out.push(NetworkSpec {
            mode,
            network,
            address,
            egress,
        });
    }
    out
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => type_name(other).to_owned(),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an IPv4 CIDR like \"10.0.0.0/8\"")]
pub(super) struct CidrError(String);

/// Why a port forward was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    #[error("{0:?} is not a port forward; write \"HOST_PORT:GUEST_PORT\", optionally with an address in front and /udp after (\"127.0.0.1:8080:80/tcp\")")]
    Usage(String),
    #[error("{port:?} in {forward:?} is not a port; allowed: 1 to 65535")]
    Port { port: String, forward: String },
    #[error("{address:?} in {forward:?} is not an IP address")]
    Address { address: String, forward: String },
}

/// `a.b.c.d/n` with n from 0 to 32.
pub(super) fn check_cidr(s: &str) -> Result<(), CidrError> {
    let bad = || CidrError(s.to_owned());
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    addr.parse::<Ipv4Addr>().map_err(|_| bad())?;
    match len.parse::<u8>() {
        Ok(n) if n <= 32 => Ok(()),
        _ => Err(bad()),
    }
}

pub(super) fn forwards(v: &Value, p: &str, errs: &mut Errs) -> Vec<PortForward> {
    let Value::Array(items) = v else {
        errs.push(
            p,
            format!(
                "expected an array like [\"8080:80\"], found {}",
                type_name(v)
            ),
        );
        return Vec::new();
    };
    let mut out: Vec<PortForward> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ip = format!("{p}[{i}]");
        let fwd = match item {
            Value::String(s) => parse_forward(s).map_err(|e| errs.push(&ip, e)).ok(),
            Value::Table(_) => forward_table(item, &ip, errs),
            other => {
                errs.push(
                    &ip,
                    format!(
                        "expected \"HOST:GUEST\" or a table, found {}",
                        type_name(other)
                    ),
                );
                None
            }
        };
        let Some(fwd) = fwd else { continue };
        let clash = out.iter().any(|o| {
            o.host_port == fwd.host_port
                && o.protocol == fwd.protocol
                && o.host_address == fwd.host_address
        });
        if clash {
            errs.push(
                &ip,
                format!("host port {} is forwarded twice", fwd.host_port),
            );
            continue;
        }
        out.push(fwd);
    }
    out
}

/// `[ADDR:]HOST:GUEST[/tcp|/udp]`.
pub fn parse_forward(s: &str) -> Result<PortForward, ForwardError> {
    let usage = || ForwardError::Usage(s.to_owned());
    let (ports, protocol) = match s.rsplit_once('/') {
        Some((ports, "tcp")) => (ports, Protocol::Tcp),
        Some((ports, "udp")) => (ports, Protocol::Udp),
        Some(_) => return Err(usage()),
        None => (s, Protocol::Tcp),
    };
    let parts: Vec<&str> = ports.rsplitn(3, ':').collect();
    let (guest, host, addr) = match parts.as_slice() {
        [g, h] => (*g, *h, None),
        [g, h, a] => (*g, *h, Some(*a)),
        _ => return Err(usage()),
    };
    let port = |t: &str| match t.parse::<u16>() {
        Ok(0) | Err(_) => Err(ForwardError::Port {
            port: t.to_owned(),
            forward: s.to_owned(),
        }),
        Ok(n) => Ok(n),
    };
    let host_address = match addr {
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(a) => a
            .trim_matches(['[', ']'])
            .parse()
            .map_err(|_| ForwardError::Address {
                address: a.to_owned(),
                forward: s.to_owned(),
            })?,
    };
    Ok(PortForward {
        host_address,
        host_port: port(host)?,
        guest_port: port(guest)?,
        protocol,
    })
}

fn forward_table(v: &Value, ip: &str, errs: &mut Errs) -> Option<PortForward> {
    let t = expect_table(v, ip, errs)?;
    let mut f = Fields::new(t, ip);
    let port = |f: &mut Fields, key: &'static str, errs: &mut Errs| -> Option<u16> {
        let kp = format!("{ip}.{key}");
        match f.get(key) {
            Some(Value::Integer(n)) => u16::try_from(*n).ok().filter(|n| *n > 0).or_else(|| {
                errs.push(&kp, format!("{n} is not a port; allowed: 1 to 65535"));
                None
            }),
            Some(other) => {
                errs.push(
                    &kp,
                    format!("expected a port number, found {}", type_name(other)),
                );
                None
            }
            None => {
                errs.push(&kp, "missing");
                None
            }
        }
    };
    let host_port = port(&mut f, "host_port", errs);
    let guest_port = port(&mut f, "guest_port", errs);
    let protocol = match f
        .get("protocol")
        .map(|v| expect_str(v, &format!("{ip}.protocol"), errs))
    {
        None | Some(Some("tcp")) => Some(Protocol::Tcp),
        Some(Some("udp")) => Some(Protocol::Udp),
        Some(Some(other)) => {
            errs.push(
                &format!("{ip}.protocol"),
                format!("unknown protocol {other:?}; allowed: \"tcp\", \"udp\""),
            );
            None
        }
        Some(None) => None,
    };
    let host_address = match f
        .get("host_address")
        .map(|v| expect_str(v, &format!("{ip}.host_address"), errs))
    {
        None => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Some(Some(a)) => a
            .parse()
            .map_err(|_| {
                errs.push(
                    &format!("{ip}.host_address"),
                    format!("{a:?} is not an IP address"),
                )
            })
            .ok(),
        Some(None) => None,
    };
    f.finish(
        &["host_port", "guest_port", "protocol", "host_address"],
        errs,
    );
    Some(PortForward {
        host_address: host_address?,
        host_port: host_port?,
        guest_port: guest_port?,
        protocol: protocol?,
    })
}
