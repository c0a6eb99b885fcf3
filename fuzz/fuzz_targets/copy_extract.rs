//! The copy extractor must hold any entry stream a guest sends to the item
//! asked for: no panic, and nothing written outside the destination
//! directory, whatever the paths, kinds, links and sizes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_proto::copy::Extractor;
use std::path::Path;

/// Every path under `dir`, without following links.
fn walk(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        out.push(p.display().to_string());
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            walk(&p, out);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(tmp) = tempfile::tempdir() else {
        return;
    };
    let dest = tmp.path().join("dest");
    let outside = tmp.path().join("outside");
    if std::fs::create_dir(&dest).is_err() || std::fs::create_dir(&outside).is_err() {
        return;
    }
    // A link to the outside already in the destination: writes through it
    // would show up there.
    let _ = std::os::unix::fs::symlink(&outside, dest.join("link"));
    let Ok(mut x) = Extractor::new(&dest, Some("item")) else {
        return;
    };
    let mut rest = data;
    while let Ok(Some((msg, used))) = skiff_proto::decode(rest) {
        rest = &rest[used..];
        match x.accept(msg) {
            Ok(false) => {}
            Ok(true) | Err(_) => break,
        }
    }
    let mut written = Vec::new();
    walk(&outside, &mut written);
    assert!(written.is_empty(), "written outside: {written:?}");
    let mut top = Vec::new();
    for e in std::fs::read_dir(&dest).into_iter().flatten().flatten() {
        top.push(e.file_name().to_string_lossy().into_owned());
    }
    top.sort();
    assert!(
        top.iter().all(|n| n == "item" || n == "link"),
        "entries beside the item: {top:?}"
    );
});
