//! Fuzzes the DATA decoder: no panics, decoding does not depend on how the input is
//! split, and an accepted message can never end early or smuggle a second one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::smtp::{BareLineEnding, DataDecoder, DataLimits};

fuzz_target!(|data: &[u8]| {
    // First byte: mode and limits; second: split size; the rest is the content.
    let [flags, split, input @ ..] = data else {
        return;
    };
    let limits = DataLimits {
        max_message_size: if flags & 2 != 0 { 64 } else { 1 << 20 },
        max_line_length: if flags & 4 != 0 { 16 } else { 1000 },
        max_hops: u32::from(flags >> 4),
        bare_line_ending: if flags & 1 != 0 {
            BareLineEnding::Normalize
        } else {
            BareLineEnding::Reject
        },
    };

    let mut whole = DataDecoder::dot_stuffed(limits);
    let used = whole.feed(input);
    let done = whole.is_done();
    let result = whole.finish();

    // Split independence: any chunking gives the same outcome.
    let step = usize::from(*split).max(1);
    let mut pieces = DataDecoder::dot_stuffed(limits);
    let mut used_pieces = 0;
    for piece in input.chunks(step) {
        let n = pieces.feed(piece);
        used_pieces += n;
        if n < piece.len() {
            break;
        }
    }
    assert_eq!(used_pieces, used);
    assert_eq!(pieces.is_done(), done);
    assert_eq!(pieces.finish(), result);

    if !done {
        assert_eq!(used, input.len(), "unfinished DATA consumes everything");
        return;
    }
    // The consumed input ends in the one true end-of-data marker.
    assert!(input[..used].ends_with(b".\r\n"));
    assert!(used == 3 || input[..used].ends_with(b"\r\n.\r\n"));

    let Ok(message) = result else {
        return;
    };
    let body = &message.body;
    assert!(body.len() as u64 <= limits.max_message_size);
    // No bare CR or LF: every CR is followed by LF and every LF preceded by CR.
    for (i, &b) in body.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(body.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
        if b == b'\n' {
            assert!(i > 0 && body[i - 1] == b'\r', "bare LF at {i}");
        }
    }
    assert!(body.is_empty() || body.ends_with(b"\r\n"));

    // Dot-stuffing the body again and decoding it gives the same body, and
    // the stuffed form has no line "." before its end, however a lenient
    // server splits lines (at CR, LF or CRLF): nothing can end it early.
    let mut stuffed = Vec::with_capacity(body.len() + 8);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            stuffed.push(b'.');
        }
        stuffed.push(b);
        at_line_start = b == b'\n';
    }
    for line in stuffed.split(|&b| b == b'\r' || b == b'\n') {
        assert_ne!(line, b".", "stuffed body contains a lone dot line");
    }
    stuffed.extend_from_slice(b".\r\n");
    let mut again = DataDecoder::dot_stuffed(DataLimits {
        max_message_size: u64::MAX,
        max_line_length: usize::MAX,
        max_hops: u32::MAX,
        bare_line_ending: BareLineEnding::Reject,
    });
    assert_eq!(again.feed(&stuffed), stuffed.len());
    assert!(again.is_done());
    let again = again.finish().expect("re-encoded body decodes");
    assert_eq!(&again.body, body);
});
