//! Fuzzes the whole session: arbitrary client bytes in arbitrary reads never panic,
//! never buffer past the line limit, and every reply line is well formed.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use relay::smtp::{
    AuthOffer, BareLineEnding, ClientInfo, Reply, Resolution, Session, SessionConfig, Step,
};

fuzz_target!(|data: &[u8]| {
    let [flags, split, input @ ..] = data else {
        return;
    };
    let config = SessionConfig {
        hostname: "relay.test".into(),
        max_message_size: 4096,
        max_recipients: 4,
        max_line_length: 128,
        max_errors: 20,
        max_hops: 5,
        bare_line_ending: if flags & 1 != 0 {
            BareLineEnding::Normalize
        } else {
            BareLineEnding::Reject
        },
        // Mail to bounces.test takes the returned-DSN path (its own transactions).
        bounce_domains: vec!["bounces.test".into()],
    };
    let max_line = config.max_line_length;
    let mut client = ClientInfo::new("127.0.0.1".parse().unwrap(), flags & 2 == 0);
    // STARTTLS and AUTH offered or not, logins good or bad, MAIL gated or not.
    client.starttls = flags & 4 != 0;
    client.auth = match flags & 24 {
        0 => AuthOffer::Never,
        8 => AuthOffer::WithTls,
        _ => AuthOffer::Always,
    };
    client.require_auth = flags & 32 != 0;
    client.require_tls = flags & 64 != 0;
    let logins_succeed = flags & 128 != 0;
    let mut session = Session::new(Arc::new(config), client);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut n = 0u32;
    'reads: for piece in input.chunks(usize::from(*split).max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match session.process(&mut buf, &mut out) {
                Step::NeedInput => {
                    // Only an incomplete command line stays buffered, and it is short.
                    assert!(buf.len() < max_line, "buffered {} bytes", buf.len());
                    break;
                }
                Step::Close => break 'reads,
                Step::CheckMail(_) | Step::CheckRcpt(_) => {
                    session.resolve(Resolution::Accept, &mut out)
                }
                Step::StartTls => session.tls_started("TLSv1.3 with cipher FUZZ".into()),
                Step::Authenticate(_) => {
                    let answer = if logins_succeed {
                        Resolution::Accept
                    } else {
                        Resolution::Reject(Reply::new(535, None, "bad"))
                    };
                    session.resolve(answer, &mut out)
                }
                Step::Message(m) => {
                    assert!(m.body.len() <= 4096);
                    n += 1;
                    session.resolve(Resolution::Queued(format!("Q{n}")), &mut out);
                }
            }
        }
    }
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.ends_with(b"\r"), "reply line without CRLF");
        assert!(line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit));
        assert!(line[3] == b' ' || line[3] == b'-');
    }
});
