use super::*;

#[test]
fn an_empty_vm_table_gets_every_default() {
    let specs = parse_file("[vm.box]\n").expect("valid");
    assert_eq!(specs, vec![VmSpec::with_defaults("box")]);
    assert_eq!(specs[0].memory_mib, 256);
    assert_eq!(specs[0].restart, RestartPolicy::No);
}

#[test]
fn a_full_service_spec_parses_into_the_expected_value() {
    let text = r#"
[vm.web]
vcpus = 2
memory = "1G"
kernel = { path = "/boot/vmlinuz", modules = "/lib/modules/6.1", params = ["quiet"] }
accel = "tcg"
network = [{ mode = "bridge", network = "lan", address = "10.88.0.10", egress = ["10.0.0.0/8"] }]
forward_ports = ["8080:80", "0.0.0.0:5353:53/udp", { host_port = 2222, guest_port = 22 }]
shares = [{ source = "/srv/site", target = "/var/www", readonly = true }]
volumes = [{ name = "web-data", target = "/data", size = "2G" }]
env = { PORT = "80" }
command = "httpd -f"
autostart = true
restart_if_changed = false
restart = { policy = "on-failure", max_retries = 5, backoff = "2s", max_backoff = "1m" }
"#;
    let spec = parse_file(text).expect("valid").remove(0);
    assert_eq!(
        (spec.vcpus, spec.memory_mib, spec.accel),
        (2, 1024, Accel::Tcg)
    );
    let k = spec.kernel.as_ref().expect("kernel");
    assert_eq!(k.params, ["quiet"]);
    assert_eq!(spec.network[0].address, Some(Ipv4Addr::new(10, 88, 0, 10)));
    assert_eq!(
        spec.network[0].egress,
        Egress::Cidrs(vec!["10.0.0.0/8".into()])
    );
    assert_eq!(spec.forward_ports.len(), 3);
    assert_eq!(spec.forward_ports[1].protocol, Protocol::Udp);
    assert_eq!(
        spec.forward_ports[1].host_address,
        "0.0.0.0".parse::<IpAddr>().expect("ip")
    );
    assert_eq!(spec.forward_ports[2].host_port, 2222);
    assert_eq!(spec.shares[0].tag, "share0");
    assert!(spec.shares[0].readonly);
    assert_eq!(spec.volumes[0].size_mib, Some(2048));
    assert_eq!(
        spec.command.as_deref(),
        Some(&["/bin/sh".to_owned(), "-c".into(), "httpd -f".into()][..])
    );
    assert!(spec.autostart && !spec.restart_if_changed);
    assert_eq!(
        spec.restart,
        RestartPolicy::OnFailure {
            max_retries: Some(5),
            backoff_ms: 2000,
            max_backoff_ms: 60_000
        }
    );
}

#[test]
fn a_single_vm_file_uses_top_level_fields_with_a_name() {
    let specs = parse_file("name = \"dev\"\nmemory = 512\n").expect("valid");
    assert_eq!(specs[0].name, "dev");
    assert_eq!(specs[0].memory_mib, 512);
}

#[test]
fn several_vms_in_one_file() {
    let specs = parse_file("[vm.a]\n[vm.b]\nvcpus = 2\n").expect("valid");
    let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn all_problems_are_reported_at_once_with_paths() {
    let err = parse_file("[vm.web]\nmemory = 0\nvcpus = 0\nbogus = 1\n").unwrap_err();
    assert_eq!(err.0.len(), 3, "{err}");
    assert!(err.to_string().starts_with("the spec has 3 problems:"));
}

#[test]
fn the_content_hash_changes_with_the_spec_and_only_then() {
    let a = parse_file("[vm.a]\nmemory = 512\n")
        .expect("valid")
        .remove(0);
    let same = parse_file("[vm.a]\nmemory = \"512M\"\n")
        .expect("valid")
        .remove(0);
    let other = parse_file("[vm.a]\nmemory = 1024\n")
        .expect("valid")
        .remove(0);
    assert_eq!(a.content_hash(), same.content_hash());
    assert_ne!(a.content_hash(), other.content_hash());
}

#[test]
fn names_follow_host_name_rules() {
    assert!(check_name("web-1").is_ok());
    assert!(check_name("1web").is_ok());
    for bad in ["", "-web", "web-", "Web", "web_1", "web.1", &"a".repeat(64)] {
        assert!(check_name(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn the_spec_round_trips_through_json_for_the_api_and_the_store() {
    let spec = parse_file(
        "[vm.a]\nrestart = \"always\"\nnetwork = \"user\"\nforward_ports = [\"8080:80\"]\n",
    )
    .expect("valid")
    .remove(0);
    let json = serde_json::to_string(&spec).expect("json");
    let back: VmSpec = serde_json::from_str(&json).expect("back");
    assert_eq!(back, spec);
}

#[test]
fn the_documented_examples_are_valid_specs() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("docs/examples") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        let specs = parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!specs.is_empty());
        n += 1;
    }
    assert!(n >= 3, "sandbox, service and dev box examples");
}

#[test]
fn a_full_os_vm_names_its_disk_and_its_init() {
    let spec = parse_file(
        "[vm.dev]\ndisk = { image = \"devbox\", persistent = true }\ninit = \"system\"\ntarget = \"graphical.target\"\n",
    )
    .expect("valid")
    .remove(0);
    assert_eq!(
        spec.disk,
        Some(DiskSpec {
            source: DiskSource::Image("devbox".into()),
            persistent: true,
        })
    );
    assert_eq!(
        spec.init,
        InitSpec::System {
            target: "graphical.target".into()
        }
    );
    let file = parse_file("[vm.sb]\ndisk = \"/srv/base.qcow2\"\ninit = \"system\"\n")
        .expect("valid")
        .remove(0);
    assert_eq!(
        file.disk,
        Some(DiskSpec {
            source: DiskSource::File("/srv/base.qcow2".into()),
            persistent: false,
        })
    );
    assert_eq!(
        file.init,
        InitSpec::System {
            target: DEFAULT_TARGET.into()
        }
    );
}

#[test]
fn a_spec_without_the_new_fields_keeps_its_hash_and_stored_form() {
    // Specs stored before disks and inits existed must read back the same
    // and not count as changed on the next apply.
    let plain = VmSpec::with_defaults("old");
    let json = serde_json::to_string(&plain).expect("json");
    assert!(!json.contains("disk") && !json.contains("init"), "{json}");
    let back: VmSpec = serde_json::from_str(&json).expect("read back");
    assert_eq!(back.content_hash(), plain.content_hash());
}

#[test]
fn roots_and_inits_that_cannot_go_together_are_refused_with_the_fix() {
    let cases = [
        (
            "[vm.a]\ndisk = \"/d.img\"\nrootfs = \"/dir\"\n",
            "vm.a.disk",
            "a VM has one root",
        ),
        ("[vm.a]\ninit = \"system\"\n", "vm.a.init", "add disk ="),
        (
            "[vm.a]\ndisk = \"/d.img\"\ninit = \"system\"\ncommand = \"x\"\n",
            "vm.a.command",
            "units of that init",
        ),
        (
            "[vm.a]\ntarget = \"multi-user.target\"\n",
            "vm.a.target",
            "add init = \"system\"",
        ),
        ("[vm.a]\ninit = \"systemd\"\n", "vm.a.init", "unknown init"),
        (
            "[vm.a]\ndisk = \"/d.img\"\ninit = \"system\"\ntarget = \"multi user\"\n",
            "vm.a.target",
            "not a systemd target",
        ),
        ("[vm.a]\ndisk = \"rel.img\"\n", "vm.a.disk", "absolute path"),
        (
            "[vm.a]\ndisk = { image = \"x\", file = \"/y\" }\n",
            "vm.a.disk",
            "not both",
        ),
        ("[vm.a]\ndisk = {}\n", "vm.a.disk", "missing the base"),
    ];
    for (text, path, want) in cases {
        let errs = parse_file(text).expect_err(text).to_string();
        assert!(
            errs.contains(&format!("{path}: ")) && errs.contains(want),
            "{text}: {errs}"
        );
    }
}

#[test]
fn identity_fields_parse_and_nonsense_is_refused() {
    let spec = parse_file(
        "[vm.dev]\nhostname = \"dev-1\"\ntimezone = \"Europe/Berlin\"\n[[vm.dev.users]]\nname = \"me\"\nssh_authorized_keys = [\"ssh-ed25519 AAAA me@host\"]\nsudo = true\n",
    )
    .expect("valid")
    .remove(0);
    assert_eq!(spec.hostname.as_deref(), Some("dev-1"));
    assert_eq!(spec.timezone.as_deref(), Some("Europe/Berlin"));
    assert_eq!(
        spec.users,
        vec![UserSpec {
            name: "me".into(),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA me@host".into()],
            sudo: true,
        }]
    );
    let cases = [
        ("[vm.a]\nhostname = \"Bad Host\"\n", "vm.a.hostname", "not a valid name"),
        ("[vm.a]\ntimezone = \"../../etc/passwd\"\n", "vm.a.timezone", "not a time zone"),
        ("[vm.a]\n[[vm.a.users]]\nname = \"root\"\n", "vm.a.users[0].name", "root exists"),
        ("[vm.a]\n[[vm.a.users]]\nname = \"x;rm\"\n", "vm.a.users[0].name", "not a user"),
        ("[vm.a]\n[[vm.a.users]]\nsudo = true\n", "vm.a.users[0].name", "missing"),
        (
            "[vm.a]\n[[vm.a.users]]\nname = \"me\"\nssh_authorized_keys = [\"ssh-rsa AAAA\\nssh-rsa BBBB\"]\n",
            "vm.a.users[0].ssh_authorized_keys[0]",
            "not a public key line",
        ),
        (
            "[vm.a]\n[[vm.a.users]]\nname = \"me\"\n[[vm.a.users]]\nname = \"me\"\n",
            "vm.a.users[1].name",
            "listed twice",
        ),
    ];
    for (text, path, want) in cases {
        let errs = parse_file(text).expect_err(text).to_string();
        assert!(
            errs.contains(&format!("{path}: ")) && errs.contains(want),
            "{text}: {errs}"
        );
    }
}

#[test]
fn a_guest_with_its_own_initrd_names_kernel_initrd_and_readiness() {
    let text = r#"
[vm.legacy]
kernel = { path = "/img/vmlinuz", initrd = "/img/initrd.img", params = ["root=/dev/vda", "rw"] }
disk = "/img/root.qcow2"
network = [{ mode = "user" }]
forward_ports = ["2223:7777"]
ready = { tcp = 7777 }
"#;
    let spec = parse_file(text).expect("valid").remove(0);
    assert!(!spec.has_agent());
    assert_eq!(
        spec.own_initrd(),
        Some(std::path::Path::new("/img/initrd.img"))
    );
    assert_eq!(spec.ready, Some(ReadySpec::Tcp(7777)));
    let console = parse_file(
        "[vm.c]\nkernel = { path = \"/k\", initrd = \"/i\" }\nready = { console = \"login: *$\" }\n",
    )
    .expect("valid")
    .remove(0);
    assert_eq!(console.ready, Some(ReadySpec::Console("login: *$".into())));
    // The stored form of an agent VM is as before (no ready, no initrd).
    let json = serde_json::to_string(&VmSpec::with_defaults("old")).expect("json");
    assert!(
        !json.contains("ready") && !json.contains("initrd"),
        "{json}"
    );
}

#[test]
fn what_needs_the_agent_is_refused_for_a_guest_with_its_own_initrd() {
    let own = "kernel = { path = \"/k\", initrd = \"/i\" }\n";
    let cases = [
        (
            "kernel = { initrd = \"/i\" }\n".to_owned(),
            "vm.a.kernel.initrd",
            "given without kernel.path",
        ),
        (
            "kernel = { path = \"/k\", initrd = \"/i\", modules = \"/m\" }\n".into(),
            "vm.a.kernel.modules",
            "does not boot",
        ),
        (
            format!("{own}disk = \"/d\"\ninit = \"system\"\n"),
            "vm.a.init",
            "starts its own init",
        ),
        (
            format!("{own}command = \"x\"\n"),
            "vm.a.command",
            "service of the guest's init",
        ),
        (
            format!("{own}image = \"base\"\n"),
            "vm.a.image",
            "disk = { image",
        ),
        (
            format!("{own}hostname = \"h\"\n"),
            "vm.a.hostname",
            "configure it in the guest's image",
        ),
        (
            format!("{own}env = {{ A = \"1\" }}\n"),
            "vm.a.env",
            "does not have",
        ),
        (
            format!("{own}ready = {{ tcp = 22 }}\n"),
            "vm.a.ready.tcp",
            "forward_ports = [\"HOSTPORT:22\"]",
        ),
        (
            format!("{own}network = [{{ mode = \"user\" }}]\nforward_ports = [\"2222:80\"]\nready = {{ tcp = 22 }}\n"),
            "vm.a.ready.tcp",
            "add one",
        ),
        (
            format!("{own}ready = {{ tcp = 0 }}\n"),
            "vm.a.ready.tcp",
            "not a TCP port",
        ),
        (
            format!("{own}ready = {{ console = \"(\" }}\n"),
            "vm.a.ready.console",
            "not a regular expression",
        ),
        (
            format!("{own}ready = {{ tcp = 22, console = \"x\" }}\n"),
            "vm.a.ready",
            "give one way",
        ),
        (
            format!("{own}ready = \"up\"\n"),
            "vm.a.ready",
            "expected { tcp = PORT }",
        ),
        (
            "ready = { console = \"login:\" }\n".into(),
            "vm.a.ready",
            "a VM with the agent is ready when its agent answers",
        ),
    ];
    for (body, path, want) in cases {
        let text = format!("[vm.a]\n{body}");
        let errs = parse_file(&text).expect_err(&text).to_string();
        assert!(
            errs.contains(&format!("{path}: ")) && errs.contains(want),
            "{text}: {errs}"
        );
    }
    // On a managed network the daemon reaches the guest's address itself.
    let bridged = format!("[vm.a]\n{own}network = [{{ mode = \"bridge\", network = \"lan\" }}]\nready = {{ tcp = 22 }}\n");
    assert!(parse_file(&bridged).is_ok());
}

#[test]
fn an_mvm_guest_brings_its_kernel_initrd_and_root_disk() {
    let own = "kernel = { path = \"/k\", initrd = \"/i\" }\ndisk = \"/root.img\"\n";
    let spec = parse_file(&format!("[vm.m]\nguest = \"mvm\"\n{own}"))
        .expect("valid")
        .remove(0);
    assert_eq!(spec.guest, GuestProfile::Mvm);
    let json = serde_json::to_string(&VmSpec::with_defaults("old")).expect("json");
    assert!(!json.contains("guest"), "{json}");
    for (body, want) in [
        (
            "guest = \"mvm\"\ndisk = \"/root.img\"\n",
            "add kernel = { path",
        ),
        (
            "guest = \"mvm\"\nkernel = { path = \"/k\", initrd = \"/i\" }\n",
            "ext4 on /dev/vda",
        ),
        ("guest = \"firecracker\"\n", "unknown guest contract"),
        (
            "guest = \"mvm\"\nkernel = { path = \"/k\", initrd = \"/i\" }\ndisk = \"/r\"\nvolumes = [{ name = \"v\", target = \"/v\" }]\n",
            "/dev/vdd",
        ),
    ] {
        let text = format!("[vm.m]\n{body}");
        let errs = parse_file(&text).expect_err(&text).to_string();
        let at_field = errs.contains("vm.m.guest: ") || errs.contains("vm.m.volumes: ");
        assert!(at_field && errs.contains(want), "{text}: {errs}");
    }
}

#[test]
fn a_guest_with_its_own_initrd_may_set_init_and_panic_but_not_skiff_s_arguments() {
    let spec = parse_file(
        "[vm.n]\nkernel = { path = \"/k\", initrd = \"/i\", params = [\"init=/nix/store/x-init\", \"panic=1\"] }\n",
    )
    .expect("valid")
    .remove(0);
    assert_eq!(
        spec.kernel.expect("kernel").params,
        ["init=/nix/store/x-init", "panic=1"]
    );
    for (body, path) in [
        (
            "kernel = { path = \"/k\", initrd = \"/i\", params = [\"skiff.root=x\"] }\n",
            "vm.n.kernel.params[0]",
        ),
        (
            "kernel = { params = [\"init=/x\"] }\n",
            "vm.n.kernel.params[0]",
        ),
        (
            "kernel = { path = \"/k\", initrd = \"/i\" }\nready = { console = \".*\" }\n",
            "vm.n.ready.console",
        ),
    ] {
        let text = format!("[vm.n]\n{body}");
        let errs = parse_file(&text).expect_err(&text).to_string();
        assert!(errs.contains(&format!("{path}: ")), "{text}: {errs}");
    }
}

#[test]
fn a_pausable_vm_may_sleep_when_idle_and_nonsense_is_refused() {
    let spec = parse_file("[vm.s]\npausable = true\nsleep_after = \"5m\"\n")
        .expect("valid")
        .remove(0);
    assert!(spec.pausable);
    assert_eq!(spec.sleep_after_ms, Some(300_000));
    let cases = [
        ("[vm.a]\nsleep_after = \"5m\"\n", "add `pausable = true`"),
        (
            "[vm.a]\npausable = false\nsleep_after = \"5m\"\n",
            "add `pausable = true`",
        ),
        (
            "[vm.a]\npausable = true\nsleep_after = \"500ms\"\n",
            "too short",
        ),
        ("[vm.a]\npausable = true\nsleep_after = \"soon\"\n", "soon"),
        (
            "[vm.a]\npausable = true\nsleep_after = 5\n",
            "expected a string",
        ),
    ];
    for (text, want) in cases {
        let errs = parse_file(text).expect_err(text).to_string();
        assert!(
            errs.contains("vm.a.sleep_after: ") && errs.contains(want),
            "{text}: {errs}"
        );
    }
}
