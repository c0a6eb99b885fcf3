//! The host-side frame decoder must survive arbitrary bytes from a guest:
//! no panic, no claim to have used more bytes than it was given, and every
//! message it accepts must re-encode to a frame that decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((msg, used))) = skiff_proto::decode(rest) {
        assert!(used > 0 && used <= rest.len());
        let mut again = Vec::new();
        if skiff_proto::encode(&msg, &mut again).is_ok() {
            let (back, n) = skiff_proto::decode(&again).expect("re-decode").expect("complete");
            assert_eq!(back, msg);
            assert_eq!(n, again.len());
        }
        rest = &rest[used..];
    }
    let mut reader = data;
    let _ = skiff_proto::read_message(&mut reader);
});
