//! Protocol state machines before login, without I/O: bytes in, actions out.

pub mod imap;
pub mod sasl;
pub mod smtp;
