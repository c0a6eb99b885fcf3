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
