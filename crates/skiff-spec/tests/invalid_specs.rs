//! Every file in tests/invalid/ is a spec that must be refused. Its
//! `# expect:` lines are messages that must each appear, verbatim, in the
//! error the user sees.

use std::path::Path;

#[test]
fn every_invalid_spec_is_refused_with_its_expected_messages() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/invalid")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
    {
        let text = std::fs::read_to_string(path).expect("read spec");
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no # expect: line",
            path.display()
        );
        let err = match skiff_spec::parse_file(&text) {
            Ok(specs) => panic!("{} was accepted: {specs:?}", path.display()),
            Err(e) => e.to_string(),
        };
        for want in expected {
            assert!(
                err.contains(want),
                "{}:\n  expected: {want}\n  got:\n{err}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} invalid specs in the corpus");
}
