//! Guest networking from the kernel command line (`skiff.ip=ADDR/LEN
//! skiff.gw=ADDR skiff.dns=ADDR`), set with ioctls: no DHCP client and no
//! helper processes, so the network is up before any command runs.

use crate::log;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// What the host asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Option<Ipv4Addr>,
}

/// Parse the `skiff.*` network arguments; `None` when there is no address
/// (no network) or it is malformed (logged).
pub fn parse_cmdline(cmdline: &str) -> Option<NetConfig> {
    let get = |key: &str| cmdline.split_whitespace().find_map(|t| t.strip_prefix(key));
    let ip = get("skiff.ip=")?;
    let (addr, prefix) = ip.split_once('/').unwrap_or((ip, "24"));
    let (Ok(addr), Ok(prefix)) = (addr.parse::<Ipv4Addr>(), prefix.parse::<u8>()) else {
        log(format_args!("ignoring malformed skiff.ip={ip}"));
        return None;
    };
    if prefix > 32 {
        log(format_args!("ignoring skiff.ip={ip}: prefix over 32"));
        return None;
    }
    Some(NetConfig {
        addr,
        prefix,
        gateway: get("skiff.gw=").and_then(|g| g.parse().ok()),
        dns: get("skiff.dns=").and_then(|d| d.parse().ok()),
    })
}

fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

/// Bring up `lo`, and configure the first other interface as asked.
pub fn configure(cfg: &NetConfig) {
    let sock = match control_socket() {
        Ok(s) => s,
        Err(e) => return log(format_args!("cannot configure the network: {e}")),
    };
    if let Err(e) = set_up(&sock, "lo") {
        log(format_args!("cannot bring up lo: {e}"));
    }
    let Some(nic) = first_nic() else {
        return log(format_args!(
            "skiff.ip given but the VM has no network interface"
        ));
    };
    let steps = [
        (
            "address",
            set_addr(&sock, &nic, libc::SIOCSIFADDR, cfg.addr),
        ),
        (
            "netmask",
            set_addr(&sock, &nic, libc::SIOCSIFNETMASK, netmask(cfg.prefix)),
        ),
        ("link up", set_up(&sock, &nic)),
    ];
    for (what, result) in steps {
        if let Err(e) = result {
            log(format_args!("cannot set the {what} of {nic}: {e}"));
        }
    }
    if let Some(gw) = cfg.gateway {
        if let Err(e) = add_default_route(&sock, gw) {
            log(format_args!("cannot add the default route via {gw}: {e}"));
        }
    }
    if let Some(dns) = cfg.dns {
        let _ = std::fs::create_dir_all("/etc");
        if let Err(e) = std::fs::write("/etc/resolv.conf", format!("nameserver {dns}\n")) {
            log(format_args!("cannot write /etc/resolv.conf: {e}"));
        }
    }
}

/// A restored guest's interface takes on a new VM's MAC and address (the
/// old address goes, and with it the routes through it).
pub fn renew(cfg: &NetConfig, mac: [u8; 6]) -> Result<(), String> {
    let sock = control_socket().map_err(|e| format!("cannot configure the network: {e}"))?;
    let nic = first_nic().ok_or("the VM has no network interface")?;
    let fail = |what: &str| {
        let nic = nic.clone();
        let what = what.to_owned();
        move |e: io::Error| format!("cannot set the {what} of {nic}: {e}")
    };
    set_mac(&sock, &nic, mac).map_err(fail("MAC address"))?;
    set_addr(&sock, &nic, libc::SIOCSIFADDR, cfg.addr).map_err(fail("address"))?;
    set_addr(&sock, &nic, libc::SIOCSIFNETMASK, netmask(cfg.prefix)).map_err(fail("netmask"))?;
    set_up(&sock, &nic).map_err(fail("link"))?;
    if let Some(gw) = cfg.gateway {
        match add_default_route(&sock, gw) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
                return Err(format!("cannot add the default route via {gw}: {e}"))
            }
            _ => {}
        }
    }
    if let Some(dns) = cfg.dns {
        std::fs::write("/etc/resolv.conf", format!("nameserver {dns}\n"))
            .map_err(|e| format!("cannot write /etc/resolv.conf: {e}"))?;
    }
    Ok(())
}

fn set_mac(sock: &OwnedFd, name: &str, mac: [u8; 6]) -> io::Result<()> {
    let mut req = ifreq_for(name)?;
    // SAFETY: sockaddr is plain old data; all zeroes is a valid value.
    let mut hw: libc::sockaddr = unsafe { std::mem::zeroed() };
    hw.sa_family = libc::ARPHRD_ETHER;
    for (dst, src) in hw.sa_data.iter_mut().zip(mac) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = hw;
    ioctl(
        sock,
        libc::SIOCSIFHWADDR,
        (&mut req as *mut libc::ifreq).cast(),
    )
}

fn first_nic() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.into_iter().next()
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new
    // descriptor that nothing else owns, so OwnedFd may take it.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data (arrays and a union of PODs); all
    // zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::other(format!(
            "interface name {name:?} is too long"
        )));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn ioctl(sock: &OwnedFd, request: libc::Ioctl, arg: *mut libc::c_void) -> io::Result<()> {
    // SAFETY: every caller passes a pointer to a live, initialised struct of
    // the type `request` expects (ifreq or rtentry) for the whole call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, arg) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_up(sock: &OwnedFd, name: &str) -> io::Result<()> {
    let mut req = ifreq_for(name)?;
    ioctl(
        sock,
        libc::SIOCGIFFLAGS,
        (&mut req as *mut libc::ifreq).cast(),
    )?;
    // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    ioctl(
        sock,
        libc::SIOCSIFFLAGS,
        (&mut req as *mut libc::ifreq).cast(),
    )
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and
    // sockaddr is the generic view the kernel reads through.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn set_addr(sock: &OwnedFd, name: &str, request: libc::Ioctl, addr: Ipv4Addr) -> io::Result<()> {
    let mut req = ifreq_for(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl(sock, request, (&mut req as *mut libc::ifreq).cast())
}

fn add_default_route(sock: &OwnedFd, gw: Ipv4Addr) -> io::Result<()> {
    // SAFETY: rtentry is plain old data; all zeroes is valid (no device
    // name pointer, no metrics).
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr_in(gw);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    ioctl(
        sock,
        libc::SIOCADDRT,
        (&mut rt as *mut libc::rtentry).cast(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_gives_address_gateway_and_dns() {
        let c = parse_cmdline("console=ttyS0 skiff.load=net skiff.ip=10.0.2.15/24 skiff.gw=10.0.2.2 skiff.dns=10.0.2.3 quiet").expect("config");
        assert_eq!(
            c,
            NetConfig {
                addr: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
                dns: Some(Ipv4Addr::new(10, 0, 2, 3))
            }
        );
        assert_eq!(parse_cmdline("console=ttyS0"), None);
        assert_eq!(parse_cmdline("skiff.ip=10.0.2.300/24"), None);
        assert_eq!(parse_cmdline("skiff.ip=10.0.2.3/40"), None);
    }

    #[test]
    fn netmasks_follow_the_prefix() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(netmask(0), Ipv4Addr::new(0, 0, 0, 0));
    }
}
