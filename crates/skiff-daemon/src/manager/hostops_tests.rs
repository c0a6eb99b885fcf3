//! Network, limit and drive setup and teardown, including after a failure
//! half-way, against the recording host: which operations ran, in order,
//! and what is left on the "host" and in the store.
use super::{DaemonPaths, Manager};
use crate::hostops::{Op, RecordingHost};
use crate::store::Store;
use std::path::Path;
use std::sync::Arc;

fn manager(dir: &Path) -> (Arc<Manager>, Arc<RecordingHost>) {
    let host = Arc::new(RecordingHost::default());
    let store = Store::open(&dir.join("state.db")).expect("store");
    let paths = DaemonPaths {
        state_dir: dir.join("state"),
        runtime_dir: dir.join("run"),
    };
    let m = Manager::new(
        store,
        paths,
        Box::new(skiff_vmm::backend::Qemu),
        host.clone(),
    );
    (m, host)
}

fn lan_spec(name: &str) -> skiff_spec::VmSpec {
    skiff_spec::parse_file(&format!(
        "[vm.{name}]\nnetwork = [{{ mode = \"bridge\", network = \"lan\" }}]\n"
    ))
    .expect("spec")
    .remove(0)
}

#[tokio::test]
async fn a_network_that_fails_half_way_leaves_no_bridge_rules_or_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (m, host) = manager(dir.path());
    host.fail_on("ApplyRules(\"update the rules of lan\")");
    let err = m
        .create_network("lan", "10.88.0.0/24", Some("10.88.0.1"))
        .await
        .expect_err("the rules fail");
    let err = crate::support::error_chain(&err);
    assert!(err.contains("injected"), "{err}");
    assert_eq!(
        host.ops(),
        [
            Op::RequireNetAdmin,
            Op::LinkExists("skb-lan".into()),
            Op::CreateBridge("skb-lan".into()),
            Op::EnableIpForwarding,
            Op::ApplyRules("update the rules of lan".into()),
            Op::DeleteLink("skb-lan".into()),
            Op::ApplyRules("remove the rules of a failed network".into()),
        ]
    );
    assert!(host.links().is_empty());
    assert!(m.store.networks().expect("networks").is_empty());
}

#[tokio::test]
async fn a_vm_on_a_network_gets_a_tap_that_goes_with_it_even_after_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (m, host) = manager(dir.path());
    m.create_network("lan", "10.88.0.0/24", Some("10.88.0.1"))
        .await
        .expect("network");
    assert_eq!(host.links(), ["skb-lan"]);
    let rec = m.create(&lan_spec("web")).expect("create");
    let tap = skiff_net::tap_name(&rec.id);

    // The TAP cannot be made: the boot fails and nothing is left.
    host.fail_on("CreateTap");
    let err = m.prepare_tap(&rec).await.expect_err("injected");
    let err = crate::support::error_chain(&err);
    assert!(err.contains("injected"), "{err}");
    assert_eq!(host.links(), ["skb-lan"]);

    // Made: the NIC has the VM's lease; removed again, the link is gone.
    let nic = m.prepare_tap(&rec).await.expect("tap").expect("a NIC");
    assert_eq!(nic.ifname, tap);
    assert_eq!(nic.address, "10.88.0.2/24");
    assert_eq!(nic.gateway, "10.88.0.1");
    assert!(host.links().contains(&tap));
    m.remove_tap(&rec.id).await;
    assert_eq!(host.links(), ["skb-lan"]);

    // The network is refused while a VM holds a lease, removed after.
    let err = m.remove_network("lan").await.expect_err("in use");
    assert!(err.to_string().contains("used by web"), "{err}");
    m.remove("web", false, false).await.expect("rm");
    let before = host.ops().len();
    m.remove_network("lan").await.expect("network rm");
    assert_eq!(
        host.ops()[before..],
        [
            Op::RequireNetAdmin,
            Op::DeleteLink("skb-lan".into()),
            Op::ApplyRules("remove the rules of lan".into()),
        ]
    );
    assert!(host.links().is_empty());
}

#[tokio::test]
async fn limits_and_drives_are_host_operations_named_after_the_vm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (m, host) = manager(dir.path());
    let spec = skiff_spec::parse_file(
        "[vm.db]\nmemory = \"512M\"\ndata = { target = \"/data\", size = \"1G\" }\nvolumes = [{ name = \"pg\", target = \"/pg\" }]\n",
    )
    .expect("spec")
    .remove(0);
    let rec = m.create(&spec).expect("create");
    let limits = skiff_vmm::cgroup::Limits::for_vm(512, 1);
    m.limit(&rec, &limits, &[10, 11]).expect("limit");
    m.remove_cgroup(&rec).await;
    let cgroup = format!("vm-{}", rec.id);
    assert_eq!(
        host.ops(),
        [
            Op::CreateCgroup {
                name: cgroup.clone(),
                pids: vec![10, 11]
            },
            Op::RemoveCgroup(cgroup),
        ]
    );

    let vm_dir = m.paths.vm_dir("db");
    let drives = crate::drives::prepare(host.as_ref(), &m.paths, &rec, &vm_dir).expect("drives");
    let labels: Vec<&str> = drives
        .drives
        .iter()
        .map(|d| d.mount.label.as_str())
        .collect();
    assert_eq!(
        labels,
        [
            "skiff-config",
            "skiff-data",
            &crate::drives::volume_label("pg")
        ]
    );
    // An existing volume is kept, never made again.
    let made = |host: &RecordingHost| {
        host.ops()
            .iter()
            .filter(|o| matches!(o, Op::MakeExt4 { .. }))
            .count()
    };
    let before = made(&host);
    crate::drives::prepare(host.as_ref(), &m.paths, &rec, &vm_dir).expect("drives");
    assert_eq!(made(&host) - before, 1, "only the config drive is rebuilt");

    // A volume that cannot be made: the error names it.
    let mut spec2 = spec.clone();
    spec2.name = "db2".into();
    spec2.volumes[0].name = "fresh".into();
    let rec2 = m.create(&spec2).expect("create");
    host.fail_on(&crate::drives::volume_label("fresh"));
    let err = crate::drives::prepare(host.as_ref(), &m.paths, &rec2, &m.paths.vm_dir("db2"))
        .expect_err("injected");
    assert!(format!("{err:#}").contains("volume \"fresh\""), "{err:#}");
}

#[tokio::test]
async fn an_mvm_guest_gets_config_secrets_and_data_drives_in_mvm_s_order_and_labels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (m, host) = manager(dir.path());
    let spec = skiff_spec::parse_file(
        "[vm.m]\nguest = \"mvm\"\nkernel = { path = \"/k\", initrd = \"/i\" }\ndisk = \"/root.img\"\ndata = { target = \"/mnt/data\", size = \"64M\" }\n",
    )
    .expect("spec")
    .remove(0);
    let rec = m.create(&spec).expect("create");
    let vm_dir = m.paths.vm_dir("m");
    let drives = crate::drives::prepare(host.as_ref(), &m.paths, &rec, &vm_dir).expect("drives");
    let labels: Vec<(&str, bool)> = drives
        .drives
        .iter()
        .map(|d| (d.mount.label.as_str(), d.mount.readonly))
        .collect();
    // vdb, vdc, vdd after the root (vda); the secrets drive even empty.
    assert_eq!(
        labels,
        [
            ("mvm-config", true),
            ("mvm-secrets", true),
            ("mvm-data", false)
        ]
    );
    let made: Vec<String> = host
        .ops()
        .iter()
        .filter_map(|o| match o {
            Op::MakeExt4 { label, .. } => Some(label.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(made, ["mvm-config", "mvm-secrets", "mvm-data"]);
    if let Some(image) = drives.secrets_image {
        let _ = std::fs::remove_file(image);
    }
}
