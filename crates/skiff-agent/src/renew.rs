//! A guest restored from another VM's snapshot takes on its own identity:
//! the host's clock, fresh randomness (every clone starts from the same
//! pool), its host name, and its network interface's MAC and address (the
//! network lets through only the new VM's).

use skiff_proto::{Renewal, RenewedNet};
use std::io::Write;
use std::os::fd::AsRawFd;

/// `RNDRESEEDCRNG` from linux/random.h, `_IO('R', 0x07)`: reseed the
/// kernel's generator from its input pool now.
const RNDRESEEDCRNG: libc::Ioctl = 0x5207;

/// The most seed bytes taken (the pool mixes in any amount; more is waste).
const MAX_SEED: usize = 512;

pub fn apply(r: &Renewal) -> Result<(), String> {
    crate::server::set_clock(r.time_ns).map_err(|e| format!("cannot set the clock: {e}"))?;
    reseed(&r.seed[..r.seed.len().min(MAX_SEED)])
        .map_err(|e| format!("cannot reseed the random number generator: {e}"))?;
    if let Some(name) = &r.hostname {
        crate::identity::set_hostname(name);
    }
    if let Some(net) = &r.net {
        renew_net(net)?;
    }
    Ok(())
}

fn reseed(seed: &[u8]) -> std::io::Result<()> {
    let mut urandom = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    urandom.write_all(seed)?;
    // SAFETY: RNDRESEEDCRNG takes no argument; the descriptor is open for
    // the whole call.
    let rc = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn renew_net(net: &RenewedNet) -> Result<(), String> {
    let mac = parse_mac(&net.mac).ok_or_else(|| format!("{:?} is not a MAC address", net.mac))?;
    let cfg = crate::net::parse_cmdline(&format!("skiff.ip={}", net.address))
        .ok_or_else(|| format!("{:?} is not an address with its prefix", net.address))?;
    let cfg = crate::net::NetConfig {
        gateway: net.gateway,
        dns: net.dns,
        ..cfg
    };
    crate::net::renew(&cfg, mac)
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_mac_is_six_hex_pairs_and_nothing_else() {
        assert_eq!(
            super::parse_mac("52:54:0e:97:21:8C"),
            Some([0x52, 0x54, 0x0e, 0x97, 0x21, 0x8c])
        );
        for bad in [
            "",
            "52:54:0e:97:21",
            "52:54:0e:97:21:8c:00",
            "5:54:0e:97:21:8c",
            "zz:54:0e:97:21:8c",
        ] {
            assert_eq!(super::parse_mac(bad), None, "{bad}");
        }
    }
}
