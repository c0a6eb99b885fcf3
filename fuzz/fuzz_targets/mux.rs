//! The serial port's frame decoder must survive arbitrary bytes from a
//! guest, fed in arbitrary pieces: no panic, a bounded buffer, and every
//! frame it accepts re-encodes to bytes that decode to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_proto::mux::MuxDecoder;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the piece size, so splits are explored too.
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let piece = usize::from(split).max(1);
    let mut decoder = MuxDecoder::new();
    for chunk in bytes.chunks(piece) {
        for frame in decoder.feed(chunk).into_iter().flatten() {
            let wire = frame.encode();
            let back = MuxDecoder::new().feed(&wire);
            assert_eq!(back, vec![Ok(frame)]);
        }
    }
});
