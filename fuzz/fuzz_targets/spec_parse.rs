//! The spec parser takes files from users and from the API: any text must
//! give specs or errors, never a panic, and what it accepts holds the
//! checks that the rest of skiff relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match skiff_spec::parse_file(text) {
        Ok(specs) => {
            for spec in specs {
                assert!(skiff_spec::check_name(&spec.name).is_ok(), "{:?}", spec.name);
                assert!(spec.vcpus >= 1, "{spec:?}");
                // Mount targets travel on the kernel command line as one word.
                let targets = spec
                    .shares
                    .iter()
                    .map(|s| s.target.as_str())
                    .chain(spec.volumes.iter().map(|v| v.target.as_str()))
                    .chain(spec.data.iter().map(|d| d.target.as_str()));
                for t in targets {
                    assert!(t.starts_with('/'), "{t:?}");
                    assert!(!t.chars().any(|c| c.is_whitespace() || c == '@' || c == '"'), "{t:?}");
                }
            }
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
        }
    }
});
