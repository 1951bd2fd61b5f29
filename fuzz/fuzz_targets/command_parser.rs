//! Fuzzes the SMTP command-line parser: no panics, and every error maps to a well-formed reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::smtp::{parse_command, Command, Mailbox, ReversePath};

fuzz_target!(|line: &[u8]| {
    match parse_command(line) {
        Ok(Command::Mail(from, _)) => {
            if let ReversePath::Mailbox(m) = from {
                round_trips(&m);
            }
        }
        Ok(Command::Rcpt(m)) => round_trips(&m),
        Ok(_) => {}
        Err(e) => {
            let reply = e.reply();
            assert!((500..600).contains(&reply.code), "{reply}");
            let wire = reply.to_bytes();
            // Exactly one line, ending in CRLF, with no other CR or LF.
            assert!(wire.ends_with(b"\r\n"));
            assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(wire.iter().filter(|&&b| b == b'\r').count(), 1);
        }
    }
});

/// A parsed mailbox prints as something that parses back to itself.
fn round_trips(m: &Mailbox) {
    let text = m.to_string();
    assert_eq!(Mailbox::parse(&text).as_ref(), Ok(m), "{text}");
}
