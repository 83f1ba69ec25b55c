//! Bytes from a peer before login into `portcullis::protocol::fuzzing::pop3`, which asserts
//! that parser's invariants (see that module).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = portcullis::protocol::fuzzing::pop3(data);
});
