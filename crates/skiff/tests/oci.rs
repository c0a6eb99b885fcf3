//! End-to-end tests of OCI images: a real registry (Debian's
//! docker-registry, the CNCF distribution registry) on loopback with
//! htpasswd credentials, images made with umoci and pushed with skopeo,
//! pulled and imported by skiff and booted in real VMs.

mod common;

use common::registry::{ok, skopeo_copy, Registry, PASSWORD, USER};
use common::{stderr, stdout, Env};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn umoci(args: &[&str]) {
    ok(Command::new("umoci").args(args), &format!("umoci {args:?}"));
}

/// An OCI layout with image `app`: a busybox base layer (with /etc/gone),
/// a second layer that deletes /etc/gone and rewrites /etc/motd, and a
/// config with Entrypoint, Cmd, Env, WorkingDir and User.
fn make_image(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    let image = |tag: &str| format!("{}:{tag}", layout.display());
    umoci(&["init", "--layout", layout.to_str().expect("utf8")]);
    umoci(&["new", "--image", &image("app")]);
    let bundle = dir.join("b1");
    umoci(&[
        "unpack",
        "--image",
        &image("app"),
        bundle.to_str().expect("utf8"),
    ]);
    let rootfs = bundle.join("rootfs");
    common::busybox_rootfs(&rootfs);
    std::fs::create_dir_all(rootfs.join("srv")).expect("mkdir");
    std::fs::write(rootfs.join("etc/motd"), "from-the-base\n").expect("write");
    std::fs::write(rootfs.join("etc/gone"), "deleted above\n").expect("write");
    umoci(&[
        "repack",
        "--image",
        &image("app"),
        bundle.to_str().expect("utf8"),
    ]);
    let bundle = dir.join("b2");
    umoci(&[
        "unpack",
        "--image",
        &image("app"),
        bundle.to_str().expect("utf8"),
    ]);
    std::fs::remove_file(bundle.join("rootfs/etc/gone")).expect("rm");
    std::fs::write(bundle.join("rootfs/etc/motd"), "from-the-top\n").expect("write");
    umoci(&[
        "repack",
        "--image",
        &image("app"),
        bundle.to_str().expect("utf8"),
    ]);
    let script = "echo \"args=$0,$* env=$GREETING cwd=$(pwd) uid=$(id -u)\"; cat /etc/motd; test -e /etc/gone && echo gone-is-back; true";
    umoci(&[
        "config",
        "--image",
        &image("app"),
        "--config.entrypoint=/bin/sh",
        "--config.entrypoint=-c",
        &format!("--config.entrypoint={script}"),
        "--config.cmd=first",
        "--config.cmd=second",
        "--config.env=GREETING=hello",
        "--config.env=PATH=/bin",
        "--config.workingdir=/srv",
        "--config.user=1000",
    ]);
    layout
}

fn skiff(env: &Env, cache: &Path, docker_config: &Path, args: &[&str]) -> Output {
    let mut cmd = env.skiff();
    cmd.env("SKIFF_CACHE_DIR", cache)
        .env("DOCKER_CONFIG", docker_config)
        .args(args);
    common::output_with_input(&mut cmd, None)
}

fn blobs(cache: &Path) -> usize {
    std::fs::read_dir(cache.join("oci/blobs/sha256")).map_or(0, |d| d.count())
}

#[test]
fn oci_images_are_pulled_with_credentials_run_with_their_config_and_imported() {
    let env = Env::new();
    let cache = common::private_cache(&env);
    let work = tempfile::tempdir().expect("tempdir");
    let layout = make_image(work.path());
    let registry = Registry::start();
    let app = registry.push(&layout, "app", "team/app:1.0");

    // Without credentials: refused, with the fix named; nothing cached.
    let no_creds = work.path().join("no-creds");
    std::fs::create_dir(&no_creds).expect("mkdir");
    let out = skiff(&env, cache.path(), &no_creds, &["image", "pull", &app]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("docker login"), "{}", stderr(&out));
    assert_eq!(blobs(cache.path()), 0);

    // docker's config file holds the password, as `docker login` leaves it.
    let creds = registry.docker_config(&work.path().join("creds"));
    let cli = |args: &[&str]| skiff(&env, cache.path(), &creds, args);
    let out = cli(&["image", "pull", "--json", &app]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(info["name"], app);
    assert_eq!(info["source"]["kind"], "pull");
    let size = info["size"].as_u64().expect("a size");
    assert!(size > 500_000, "busybox and all: {size}");
    assert!(
        stderr(&out).contains("pulling layer 2/2"),
        "{}",
        stderr(&out)
    );
    // Config and two layers, each once.
    assert_eq!(blobs(cache.path()), 3);

    // The image's Entrypoint, Cmd, Env, WorkingDir and User apply; the
    // layers' deletions and rewrites show in the tree.
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "-q", "--image", &app];
        args.extend(extra);
        cli(&args)
    };
    let out = run(&[]);
    assert_eq!(
        stdout(&out),
        "args=first,second env=hello cwd=/srv uid=1000\nfrom-the-top\n",
        "{}",
        stderr(&out)
    );
    // Arguments replace Cmd and follow the Entrypoint; flags override the
    // rest, as with docker run.
    let out = run(&["-u", "0", "-w", "/", "-e", "GREETING=over", "--", "x", "y"]);
    assert_eq!(
        stdout(&out),
        "args=x,y env=over cwd=/ uid=0\nfrom-the-top\n",
        "{}",
        stderr(&out)
    );

    // A second image on the same layers stores only its own config.
    umoci(&[
        "config",
        "--image",
        &format!("{}:app", layout.display()),
        "--tag",
        "app2",
        "--config.env=GREETING=second-image",
    ]);
    let app2 = registry.push(&layout, "app2", "team/app2:1.0");
    let out = cli(&["image", "pull", "-q", &app2]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(blobs(cache.path()), 4, "the shared layers are stored once");

    // Without a registry: a `docker save` archive and an OCI layout.
    let archive = work.path().join("app.tar");
    skopeo_copy(
        &[],
        &format!("oci:{}:app", layout.display()),
        &format!("docker-archive:{}:app:2.0", archive.display()),
    );
    let archive_arg = archive.to_str().expect("utf8");
    let out = cli(&["image", "import", "--json", archive_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    let imported: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(imported["name"], "app:2.0");
    let single = work.path().join("single");
    skopeo_copy(
        &[],
        &format!("oci:{}:app", layout.display()),
        &format!("oci:{}:only", single.display()),
    );
    let single_arg = single.to_str().expect("utf8");
    let out = cli(&["image", "import", "--name", "mine:3", single_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&["run", "-q", "--image", "mine:3", "--", "z"]);
    assert_eq!(
        stdout(&out),
        "args=z, env=hello cwd=/srv uid=1000\nfrom-the-top\n",
        "{}",
        stderr(&out)
    );

    let listed = cli(&["image", "ls"]);
    let listed = stdout(&listed);
    let shown_size = skiff_image::human_size(size);
    for (name, source) in [
        (&app, "pull"),
        (&app2, "pull"),
        (&"app:2.0".to_owned(), "import"),
    ] {
        assert!(
            listed.lines().any(|l| l.starts_with(name.as_str())
                && l.contains(source)
                && l.contains(&shown_size)),
            "{name} {source} {shown_size}: {listed}"
        );
    }
    let out = cli(&["image", "rm", "app:2.0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Its layers (uncompressed, so other blobs than the registry's) go
    // with a prune; what the other images use stays.
    let before = blobs(cache.path());
    let out = cli(&["image", "prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pruned = before - blobs(cache.path());
    assert!(pruned >= 2, "pruned {pruned}: {}", stdout(&out));
    let out = cli(&["run", "-q", "--image", "mine:3", "--", "z"]);
    assert_eq!(out.status.code(), Some(0), "untouched: {}", stderr(&out));
    let out = cli(&["run", "-q", "--image", &app]);
    assert_eq!(out.status.code(), Some(0), "untouched: {}", stderr(&out));

    // A spec naming an image the cache lacks: `create` pulls it (where the
    // user sees the progress), and the daemon boots it.
    let app3 = registry.push(&layout, "app", "team/app3:1.0");
    let svc = work.path().join("svc.toml");
    std::fs::write(&svc, format!("[vm.svc]\nimage = \"{app3}\"\n")).expect("spec");
    let out = cli(&["create", "-f", svc.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    // (Its layers are app's, stored already: only unpacked.)
    assert!(
        stderr(&out).contains(&format!("resolving {app3}"))
            && stderr(&out).contains("unpacking layer 2/2")
            && !stderr(&out).contains("pulling layer"),
        "{}",
        stderr(&out)
    );
    // Without a `command`, the image's Entrypoint and Cmd are the service
    // (as `docker run IMAGE`), with its Env, WorkingDir and User; it ends,
    // and so does the VM.
    let out = cli(&["start", "svc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Polls `look` (which gives what it saw) until `done` says yes.
    let until = |what: &str, args: &[&str], done: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = cli(args);
            let seen = format!("{}{}", stdout(&out), stderr(&out));
            if done(&seen) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out: {what}; last saw: {seen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    until("the service's output in the logs", &["logs", "svc"], &|l| {
        // (The console's lines end in \r\n.)
        l.contains("args=first,second env=hello cwd=/srv uid=1000") && l.contains("from-the-top")
    });
    until("the VM stopped after its service", &["ls"], &|l| {
        l.lines()
            .any(|l| l.starts_with("svc") && l.contains("exited successfully"))
    });
    let out = cli(&["rm", "-f", "svc"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A spec's own command replaces them; exec gets the image's Env (under
    // the spec's env), WorkingDir and User unless it says otherwise.
    std::fs::write(
        &svc,
        format!("[vm.box]\nimage = \"{app3}\"\ncommand = [\"sleep\", \"600\"]\nenv = {{ EXTRA = \"spec\" }}\n"),
    )
    .expect("spec");
    let out = cli(&["create", "-f", svc.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&["start", "box"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let probe = "echo $GREETING $EXTRA $(pwd) $(id -u)";
    let out = cli(&["exec", "box", "--", "sh", "-c", probe]);
    assert_eq!(stdout(&out), "hello spec /srv 1000\n", "{}", stderr(&out));
    let out = cli(&[
        "exec", "-u", "0", "-w", "/etc", "box", "--", "sh", "-c", probe,
    ]);
    assert_eq!(stdout(&out), "hello spec /etc 0\n", "{}", stderr(&out));
    let out = cli(&["rm", "-f", "box"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The same image as a root on a block device: an ext4 base made from
    // it, with a throw-away layer per VM.
    std::fs::write(
        &svc,
        format!("[vm.blk]\ndisk = {{ image = \"{app3}\" }}\ncommand = [\"sleep\", \"600\"]\n"),
    )
    .expect("spec");
    let out = cli(&["create", "-f", svc.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&["start", "blk"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let root = "grep ' / ' /proc/mounts | cut -d' ' -f1,3; cat /etc/motd; echo $GREETING $(pwd)";
    let out = cli(&["exec", "blk", "--", "sh", "-c", root]);
    assert_eq!(
        stdout(&out),
        "/dev/vda ext4\nfrom-the-top\nhello /srv\n",
        "{}",
        stderr(&out)
    );
    let out = cli(&["rm", "-f", "blk"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The daemon itself pulls what its API clients name (here a pool of
    // an image nobody pulled, asked for with curl); a pool's sandboxes wait
    // for commands instead of running the image's Cmd.
    let app4 = registry.push(&layout, "app2", "team/app4:1.0");
    let socket = env.runtime.path().join("skiff.sock");
    // POST /v1/pools with curl: the answer's body, then its status code.
    let create_pool = |body: &str| {
        let out = ok(
            Command::new("curl").args([
                "-sS",
                "--unix-socket",
                socket.to_str().expect("utf8"),
                "-H",
                "content-type: application/json",
                "-d",
                body,
                "-w",
                "\n%{http_code}",
                "http://skiff/v1/pools",
            ]),
            "curl",
        );
        stdout(&out)
    };
    let body = format!(r#"{{"name":"p","size":1,"image":"{app4}"}}"#);
    let answer = create_pool(&body);
    assert!(answer.ends_with("\n201"), "{answer}");
    let listed = stdout(&cli(&["image", "ls"]));
    assert!(listed.lines().any(|l| l.starts_with(&app4)), "{listed}");
    let out = cli(&["pool", "take", "--json", "p"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let taken: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let sandbox = taken["vm"].as_str().expect("a sandbox name").to_owned();
    std::thread::sleep(Duration::from_secs(2));
    let out = cli(&["exec", &sandbox, "--", "sh", "-c", probe]);
    assert_eq!(stdout(&out), "second-image /srv 1000\n", "{}", stderr(&out));
    let out = cli(&["pool", "rm", "p"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&["rm", "-f", &sandbox]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A reference the registry lacks: the API says which and why.
    let body = format!(
        r#"{{"name":"q","size":1,"image":"127.0.0.1:{}/team/none:9"}}"#,
        registry.port
    );
    let answer = create_pool(&body);
    assert!(
        answer.ends_with("\n502")
            && answer.contains("cannot pull image")
            && answer.contains("no manifest 9"),
        "{answer}"
    );
    assert!(
        !stdout(&cli(&["pool", "ls"])).contains('q'),
        "nothing half-made"
    );

    // An image a VM of the daemon boots is not removed under it.
    let spec = work.path().join("user.toml");
    std::fs::write(&spec, "[vm.user]\nimage = \"mine:3\"\n").expect("spec");
    let out = cli(&["create", "-f", spec.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&["image", "rm", "mine:3"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("in use by VM user"),
        "{}",
        stderr(&out)
    );
    let out = cli(&["rm", "user"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&["image", "rm", "mine:3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.assert_clean();
}

#[test]
fn a_registry_with_token_auth_is_pulled_through_its_token_server() {
    let env = Env::new();
    let cache = common::private_cache(&env);
    let work = tempfile::tempdir().expect("tempdir");
    let layout = make_image(work.path());
    let registry = Registry::start_with_tokens();
    let app = registry.push(&layout, "app", "team/tok:1");
    let token_requests = registry.token_requests.clone().expect("token mode");
    token_requests.lock().expect("lock").clear();

    // Without credentials the token server refuses; skiff says how to log
    // in, and keeps nothing.
    let none = work.path().join("none");
    std::fs::create_dir(&none).expect("mkdir");
    let out = skiff(&env, cache.path(), &none, &["image", "pull", &app]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("its token server http://127.0.0.1:")
            && stderr(&out).contains("401")
            && stderr(&out).contains("docker login"),
        "{}",
        stderr(&out)
    );
    assert_eq!(blobs(cache.path()), 0);

    // With them, from a credential helper as docker runs it (its config
    // names the helper; the helper is asked for the registry's host): a
    // token for exactly this repository, pull only.
    let creds = work.path().join("creds");
    let bin = work.path().join("bin");
    std::fs::create_dir_all(&creds).expect("mkdir");
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::fs::write(
        creds.join("config.json"),
        format!(
            r#"{{"credHelpers":{{"127.0.0.1:{}":"skifftest"}}}}"#,
            registry.port
        ),
    )
    .expect("config.json");
    let helper = bin.join("docker-credential-skifftest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\n[ \"$1\" = get ] && [ \"$server\" = 127.0.0.1:{} ] || exit 1\necho '{{\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}'\n",
            registry.port
        ),
    )
    .expect("helper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut pull = env.skiff();
    pull.env("SKIFF_CACHE_DIR", cache.path())
        .env("DOCKER_CONFIG", &creds)
        .env("PATH", &path)
        .args(["image", "pull", "-q", &app]);
    let out = common::output_with_input(&mut pull, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = token_requests.lock().expect("lock").clone();
    assert!(
        seen.iter()
            .any(|l| l.contains("scope=repository%3Ateam%2Ftok%3Apull")
                && l.contains("service=skiff-test-registry")),
        "{seen:?}"
    );
    assert_eq!(blobs(cache.path()), 3);
    let out = skiff(
        &env,
        cache.path(),
        &creds,
        &["run", "-q", "--image", &app, "--", "tok"],
    );
    assert_eq!(
        stdout(&out),
        "args=tok, env=hello cwd=/srv uid=1000\nfrom-the-top\n",
        "{}",
        stderr(&out)
    );
    env.assert_clean();
}

#[test]
fn bad_references_and_missing_images_are_clear_errors() {
    let env = Env::new();
    let cache = common::private_cache(&env);
    let registry = Registry::start();
    let none = tempfile::tempdir().expect("tempdir");
    for (args, says) in [
        (
            vec!["image", "pull", "Bad/Name"],
            "invalid image reference \"Bad/Name\"",
        ),
        (
            vec!["image", "pull", "app@sha256:12"],
            "not a sha256 digest",
        ),
        (
            vec!["image", "import", "/nonexistent/x.tar"],
            "cannot read /nonexistent/x.tar",
        ),
    ] {
        let out = skiff(&env, cache.path(), none.path(), &args);
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    // A tag the registry does not have (with credentials, so the answer is
    // about the tag).
    let creds = none.path().join("c");
    std::fs::create_dir(&creds).expect("mkdir");
    std::fs::write(
        creds.join("config.json"),
        format!(
            r#"{{"auths":{{"127.0.0.1:{}":{{"username":"{USER}","password":"{PASSWORD}"}}}}}}"#,
            registry.port
        ),
    )
    .expect("config");
    let missing = format!("127.0.0.1:{}/team/none:1.0", registry.port);
    let out = skiff(&env, cache.path(), &creds, &["image", "pull", &missing]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains(&format!("image {missing}"))
            && stderr(&out).contains("no manifest 1.0"),
        "{}",
        stderr(&out)
    );
    assert_eq!(blobs(cache.path()), 0);
    let images = std::fs::read_dir(cache.path().join("images")).map_or(0, |d| d.count());
    assert_eq!(images, 0, "nothing half-made in the cache");
}

/// A `docker save` archive (classic layout) whose one layer holds `path`.
fn hostile_archive(dir: &Path, path: &str) -> PathBuf {
    let archive = dir.join("hostile.tar");
    let script = r#"
import io, json, sys, tarfile, hashlib
out, path = sys.argv[1], sys.argv[2]
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w", format=tarfile.USTAR_FORMAT) as t:
    data = b"owned\n"
    info = tarfile.TarInfo(path)
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))
layer = layer.getvalue()
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]}}).encode()
cname = hashlib.sha256(config).hexdigest() + ".json"
manifest = json.dumps([{"Config": cname, "RepoTags": ["evil:1"], "Layers": ["layer.tar"]}]).encode()
with tarfile.open(out, "w") as t:
    for name, data in [("manifest.json", manifest), (cname, config), ("layer.tar", layer)]:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
"#;
    ok(
        Command::new("python3")
            .args(["-c", script])
            .arg(&archive)
            .arg(path),
        "python3 (a hostile archive)",
    );
    archive
}

#[test]
fn a_layer_that_escapes_its_root_is_refused_with_nothing_left() {
    let env = Env::new();
    let cache = common::private_cache(&env);
    let work = tempfile::tempdir().expect("tempdir");
    let none = work.path().join("no-docker-config");
    for path in ["../../escaped", "/etc/escaped"] {
        let archive = hostile_archive(work.path(), path);
        let out = skiff(
            &env,
            cache.path(),
            &none,
            &["image", "import", archive.to_str().expect("utf8")],
        );
        assert_eq!(out.status.code(), Some(125), "{path}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("is refused") && stderr(&out).contains(path),
            "{path}: {}",
            stderr(&out)
        );
        // No image, no half-unpacked root.
        let images = cache.path().join("images");
        let left: Vec<_> = std::fs::read_dir(&images)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|g| std::fs::read_dir(g.path()).into_iter().flatten().flatten())
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{path}: left in the cache: {left:?}");
    }
    assert!(!work.path().join("escaped").exists());
    assert!(!Path::new("/etc/escaped").exists());
    let listed = skiff(&env, cache.path(), &none, &["image", "ls"]);
    assert!(!stdout(&listed).contains("evil"), "{}", stdout(&listed));
}
