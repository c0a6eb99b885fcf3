//! A NIC on a TAP device that the caller created and wired to a bridge
//! (skiff-net does that for managed networks). The guest's address is fixed
//! by the host and passed on the kernel command line.

/// A guest interface on an existing TAP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapNic {
    /// The TAP device QEMU opens by name.
    pub ifname: String,
    /// The guest's address with its prefix, like `10.88.0.2/24`.
    pub address: String,
    pub gateway: String,
    pub dns: Option<String>,
}

impl TapNic {
    pub fn qemu_args(&self, mac: &str) -> Vec<String> {
        vec![
            "-netdev".into(),
            format!("tap,id=net0,ifname={},script=no,downscript=no", self.ifname),
            "-device".into(),
            format!("virtio-net-device,netdev=net0,mac={mac}"),
        ]
    }

    /// The kernel's own `ip=` form of the address
    /// (`ip=CLIENT::GATEWAY:NETMASK:::off`), for a guest without skiff's
    /// agent: initrds (dracut, initramfs-tools' networking) and
    /// systemd-network-generator read it. None if the address is not
    /// `A.B.C.D/PREFIX`.
    pub fn ip_arg(&self) -> Option<String> {
        let (addr, prefix) = self.address.split_once('/')?;
        let addr: std::net::Ipv4Addr = addr.parse().ok()?;
        let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 32)?;
        let mask = std::net::Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix).unwrap_or(0));
        Some(format!("ip={addr}::{}:{mask}:::off", self.gateway))
    }

    pub fn kernel_args(&self) -> Vec<String> {
        let mut args = vec![
            "skiff.load=net".into(),
            format!("skiff.ip={}", self.address),
            format!("skiff.gw={}", self.gateway),
        ];
        if let Some(dns) = &self.dns {
            args.push(format!("skiff.dns={dns}"));
        }
        args
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kernel_ip_argument_has_the_netmask_of_the_prefix() {
        let nic = |address: &str| super::TapNic {
            ifname: "t".into(),
            address: address.into(),
            gateway: "10.88.0.1".into(),
            dns: None,
        };
        assert_eq!(
            nic("10.88.0.7/24").ip_arg().as_deref(),
            Some("ip=10.88.0.7::10.88.0.1:255.255.255.0:::off")
        );
        assert_eq!(
            nic("10.88.0.7/20").ip_arg().as_deref(),
            Some("ip=10.88.0.7::10.88.0.1:255.255.240.0:::off")
        );
        assert_eq!(nic("10.88.0.7").ip_arg(), None);
        assert_eq!(nic("10.88.0.7/33").ip_arg(), None);
    }
}
