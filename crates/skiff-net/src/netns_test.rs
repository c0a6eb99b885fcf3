//! Tests that need a network namespace of their own (root or
//! CAP_SYS_ADMIN). Without the privilege they skip, saying so, unless
//! `SKIFF_REQUIRE_PRIVILEGED` is set (scripts/test.sh sets it): then a
//! skip is a failure, so CI cannot pass without having run them.

/// Run `f` on a thread of its own in a fresh network namespace, so the
/// test changes nothing on the host (nft and netlink act in the namespace
/// of the calling thread). `None` when the namespace cannot be made.
pub(crate) fn in_new_netns<T: Send + 'static>(
    test: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let outcome = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok::<T, nix::Error>(f())
    })
    .join()
    .expect("test thread");
    match outcome {
        Ok(v) => Some(v),
        Err(e) if std::env::var_os("SKIFF_REQUIRE_PRIVILEGED").is_some() => panic!(
            "{test} needs a network namespace of its own ({e}); run it as root, \
             or unset SKIFF_REQUIRE_PRIVILEGED to let it skip"
        ),
        Err(e) => {
            eprintln!("SKIPPED {test}: cannot create a network namespace ({e})");
            None
        }
    }
}
