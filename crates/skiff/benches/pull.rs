//! Pull throughput: `skiff image pull` of a multi-layer image from a real
//! registry on loopback (Debian's docker-registry) against `skopeo copy`
//! of the same image to a local OCI layout, alternating, each into an
//! empty destination. skiff also verifies every blob and unpacks the
//! layers into a root; skopeo only stores the blobs. Reports the ratio.
//!
//! Then the first `skiff run --standalone --image REF -- true` of a freshly
//! pulled image against the same run of the recipe image it was made from
//! (images/systemd.toml, built first if needed: root and a Debian mirror),
//! so both roots hold the same files; alternating, each pull fresh (the
//! image and its blobs removed before). Reports that ratio too.
//!
//! Run with `cargo bench -p skiff --bench pull -- --layers 4 --mib 16 --runs 5`.

mod common;
use common::arg;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn median(v: &mut [f64]) -> f64 {
    assert!(!v.is_empty(), "no samples");
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// An OCI layout with `layers` layers of `mib` MiB each (incompressible
/// bytes, so gzip does not make the transfer trivial).
fn make_image(dir: &Path, layers: u64, mib: u64) -> String {
    let layout = dir.join("layout");
    let image = format!("{}:bench", layout.display());
    ok(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
        "umoci init",
    );
    ok(
        Command::new("umoci").args(["new", "--image", &image]),
        "umoci new",
    );
    for i in 0..layers {
        let bundle = dir.join(format!("b{i}"));
        ok(
            Command::new("umoci")
                .args(["unpack", "--image", &image])
                .arg(&bundle),
            "umoci unpack",
        );
        let data = dir.join(format!("b{i}/rootfs/layer{i}.bin"));
        ok(
            Command::new("head")
                .args(["-c", &(mib << 20).to_string(), "/dev/urandom"])
                .stdout(std::fs::File::create(&data).expect("layer data")),
            "head",
        );
        ok(
            Command::new("umoci")
                .args(["repack", "--image", &image])
                .arg(&bundle),
            "umoci repack",
        );
    }
    image
}

fn main() {
    let (layers, mib, runs) = (
        arg("--layers", 4),
        arg("--mib", 16),
        arg("--runs", 5) as usize,
    );
    let work = tempfile::tempdir().expect("tempdir");
    let image = make_image(work.path(), layers, mib);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let config = work.path().join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            work.path().join("data").display()
        ),
    )
    .expect("config");
    let mut registry = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry (scripts/setup.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the registry did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let reference = format!("127.0.0.1:{port}/bench/app:1");
    ok(
        Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{image}"),
            &format!("docker://{reference}"),
        ]),
        "skopeo push",
    );
    let skiff = Path::new(env!("CARGO_BIN_EXE_skiff"));
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let cache = work.path().join(format!("cache{i}"));
        let t = Instant::now();
        ok(
            Command::new(skiff)
                .env("SKIFF_CACHE_DIR", &cache)
                .args(["image", "pull", "-q", &reference]),
            "skiff image pull",
        );
        ours.push(t.elapsed().as_secs_f64());
        let root = cache.join("oci/blobs/sha256");
        let stored = std::fs::read_dir(&root).map_or(0, |d| d.count()) as u64;
        assert_eq!(stored, layers + 1, "layers and config stored");
        let dest = work.path().join(format!("copy{i}"));
        let t = Instant::now();
        ok(
            Command::new("skopeo").args([
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{reference}"),
                &format!("oci:{}:x", dest.display()),
            ]),
            "skopeo copy",
        );
        theirs.push(t.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(&cache);
        let _ = std::fs::remove_dir_all(&dest);
        eprintln!(
            "run {}/{runs}: skiff pull {:.2} s, skopeo copy {:.2} s",
            i + 1,
            ours[i],
            theirs[i]
        );
    }
    let first_runs = first_run_of_a_pulled_image(work.path(), port, runs);
    let _ = registry.kill();
    let _ = registry.wait();
    let (o, t) = (median(&mut ours), median(&mut theirs));
    let total = layers * mib;
    println!("pull of a {layers}-layer image ({total} MiB) from a loopback registry, {runs} alternating runs, medians:");
    println!("  skopeo copy to an OCI layout       {o:>8.2} s", o = t);
    println!("  skiff image pull (verify + unpack) {o:>8.2} s");
    println!("  ratio skiff/skopeo                 {:>8.3}", o / t);
    let (mut pulled, mut recipe) = first_runs;
    let (p, r) = (median(&mut pulled), median(&mut recipe));
    println!("first `skiff run --standalone --image IMAGE -- true` after the pull, {runs} alternating runs, medians:");
    println!("  recipe image (systemd)             {:>8.2} s", r);
    println!("  the same root pulled as OCI        {:>8.2} s", p);
    println!("  ratio pulled/recipe                {:>8.3}", p / r);
}

/// The wall times (pulled, recipe) of `skiff run` of the recipe image
/// `systemd` and of an OCI image of its root pushed to the registry on
/// `port`, pulled afresh before each pulled run.
fn first_run_of_a_pulled_image(work: &Path, port: u16, runs: usize) -> (Vec<f64>, Vec<f64>) {
    let skiff = Path::new(env!("CARGO_BIN_EXE_skiff"));
    let recipe = format!("{}/../../images/systemd.toml", env!("CARGO_MANIFEST_DIR"));
    let built = Command::new(skiff)
        .args(["image", "build", "--json", "-f", &recipe])
        .stderr(Stdio::inherit())
        .output()
        .expect("skiff image build");
    assert!(built.status.success(), "skiff image build failed");
    let info: serde_json::Value = serde_json::from_slice(&built.stdout).expect("image json");
    let root = Path::new(info["root"].as_str().expect("root")).to_owned();
    // The same files as one OCI layer.
    let layout = work.join("same-root");
    let image = format!("{}:same", layout.display());
    ok(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
        "umoci init",
    );
    ok(
        Command::new("umoci").args(["new", "--image", &image]),
        "umoci new",
    );
    let bundle = work.join("same-bundle");
    ok(
        Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle),
        "umoci unpack",
    );
    ok(
        Command::new("cp")
            .arg("-a")
            .arg(root.join("."))
            .arg(bundle.join("rootfs")),
        "cp -a the recipe root",
    );
    ok(
        Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle),
        "umoci repack",
    );
    let _ = std::fs::remove_dir_all(&bundle);
    let reference = format!("127.0.0.1:{port}/bench/same-root:1");
    ok(
        Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{image}"),
            &format!("docker://{reference}"),
        ]),
        "skopeo push",
    );
    // A cache of the benchmark's own (pulls and prunes stay out of the
    // user's), with the kernel, the initramfs and the recipe image linked
    // from the shared one.
    let cache = work.join("run-cache");
    std::fs::create_dir_all(cache.join("images")).expect("cache");
    let prepared = Command::new(skiff)
        .args(["image", "prepare", "--json"])
        .output()
        .expect("skiff image prepare");
    assert!(prepared.status.success(), "skiff image prepare failed");
    let prepared: serde_json::Value = serde_json::from_slice(&prepared.stdout).expect("json");
    let kernel = Path::new(prepared["kernel"].as_str().expect("kernel")).to_owned();
    let initrd = Path::new(prepared["initrd"].as_str().expect("initrd")).to_owned();
    let link = |from: &Path, to: &str| {
        std::os::unix::fs::symlink(from, cache.join(to)).expect("link into the cache")
    };
    // .../kernels/<package>/boot/vmlinuz-*, .../initramfs/<file>,
    // .../images/systemd/<hash>/root
    link(kernel.ancestors().nth(3).expect("kernels"), "kernels");
    link(initrd.parent().expect("initramfs"), "initramfs");
    link(
        root.ancestors().nth(2).expect("image group"),
        "images/systemd",
    );
    let cli = |args: &[&str]| {
        let mut c = Command::new(skiff);
        c.env("SKIFF_CACHE_DIR", &cache).args(args);
        c
    };
    let run = |name: &str| {
        let t = Instant::now();
        let args = ["run", "--standalone", "-q", "--image", name, "--", "true"];
        ok(&mut cli(&args), "skiff run");
        t.elapsed().as_secs_f64()
    };
    run("systemd"); // warms the page cache for the recipe side
    let (mut pulled, mut recipe) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let _ = cli(&["image", "rm", &reference]).output();
        ok(&mut cli(&["image", "prune"]), "skiff image prune");
        ok(
            &mut cli(&["image", "pull", "-q", &reference]),
            "skiff image pull",
        );
        if i % 2 == 0 {
            pulled.push(run(&reference));
            recipe.push(run("systemd"));
        } else {
            recipe.push(run("systemd"));
            pulled.push(run(&reference));
        }
        eprintln!(
            "run {}/{runs}: first run of the pulled image {:.2} s, of the recipe image {:.2} s",
            i + 1,
            pulled[i],
            recipe[i]
        );
    }
    (pulled, recipe)
}
