//! Bytes from a peer before login into `portcullis::protocol::fuzzing::nginx_auth`, which asserts
//! that parser's invariants (see that module).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis::protocol::fuzzing::nginx_auth(data);
});
