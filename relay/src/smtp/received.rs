//! The `Received:` trace header (RFC 5321 4.4) and RFC 5322 dates, without a clock or chrono.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::address::Mailbox;

/// What goes into one `Received:` field. The I/O layer supplies the id and time.
#[derive(Clone, Copy, Debug)]
pub struct ReceivedInfo<'a> {
    /// The name the client gave in EHLO/HELO.
    pub helo: &'a str,
    /// The client's IP address.
    pub peer: IpAddr,
    /// Our own host name (`by` clause).
    pub hostname: &'a str,
    /// `SMTP`, `ESMTP`, `ESMTPS`, `ESMTPA` or `ESMTPSA` (RFC 3848): the `with` clause.
    pub protocol: &'a str,
    /// The TLS protocol and cipher, for a message that came over TLS.
    pub tls: Option<&'a str>,
    /// The user the client logged in as, when it is to be shown.
    pub auth_user: Option<&'a str>,
    /// The queue id of the message (`id` clause).
    pub id: &'a str,
    /// The envelope recipients; a `for` clause is written only when there is exactly one.
    pub recipients: &'a [Mailbox],
    /// Seconds since the Unix epoch, UTC.
    pub timestamp: u64,
}

/// Longest HELO name copied into the header, so the first line stays under
/// the RFC 5322 limit of 998 octets whatever the client sent.
const MAX_HELO_IN_HEADER: usize = 255;

/// Builds the trace field, folded with CRLF TAB (shown as spaces) and ending in CRLF:
///
/// ```text
/// Received: from helo.name ([127.0.0.1])
///     (using TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256)
///     (Authenticated sender: app@example.com)
///     by relay.test (relay) with ESMTPSA id ID
///     for <rcpt@example.com>; Mon, 23 Nov 2026 13:45:00 +0000
/// ```
pub fn received_header(info: &ReceivedInfo<'_>) -> String {
    let mut h = String::with_capacity(160);
    h.push_str("Received: from ");
    // The HELO name is client input: keep only characters that are valid in a
    // domain or address literal, so it cannot break the header's syntax.
    h.extend(info.helo.chars().take(MAX_HELO_IN_HEADER).map(|c| {
        if c.is_ascii_alphanumeric() || "-._:[]".contains(c) {
            c
        } else {
            '_'
        }
    }));
    h.push_str(" (");
    match info.peer.to_canonical() {
        IpAddr::V4(ip) => {
            let _ = write!(h, "[{ip}]");
        }
        IpAddr::V6(ip) => {
            let _ = write!(h, "[IPv6:{ip}]");
        }
    }
    h.push(')');
    if let Some(tls) = info.tls {
        let _ = write!(h, "\r\n\t(using {})", comment_text(tls));
    }
    if let Some(user) = info.auth_user {
        let _ = write!(h, "\r\n\t(Authenticated sender: {})", comment_text(user));
    }
    let _ = write!(
        h,
        "\r\n\tby {} (relay) with {} id {}",
        info.hostname, info.protocol, info.id
    );
    match info.recipients {
        [one] => {
            let _ = write!(h, "\r\n\tfor <{one}>; ");
        }
        _ => h.push_str(";\r\n\t"),
    }
    h.push_str(&rfc5322_date(info.timestamp));
    h.push_str("\r\n");
    h
}

/// Text that is safe inside a header comment: printable ASCII and spaces, without the
/// characters that would end or escape the comment; at most 255 characters.
fn comment_text(text: &str) -> String {
    text.chars()
        .take(255)
        .map(|c| {
            if (c.is_ascii_graphic() || c == ' ') && !"()\\".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Formats a Unix time as an RFC 5322 3.3 date in UTC: `Mon, 23 Nov 2026 13:45:00 +0000`.
pub fn rfc5322_date(secs_since_epoch: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs_since_epoch / 86_400;
    let rem = secs_since_epoch % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31) in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`, unsigned form).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_709_164_799),
            "Wed, 28 Feb 2024 23:59:59 +0000"
        );
        assert_eq!(
            rfc5322_date(1_709_251_200),
            "Fri, 1 Mar 2024 00:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(1_798_033_500),
            "Wed, 23 Dec 2026 13:45:00 +0000"
        );
        assert_eq!(
            rfc5322_date(1_795_441_500),
            "Mon, 23 Nov 2026 13:45:00 +0000"
        );
        assert_eq!(
            rfc5322_date(4_102_444_800),
            "Fri, 1 Jan 2100 00:00:00 +0000"
        );
    }

    #[test]
    fn civil_from_days_round_trips_every_day_for_four_centuries() {
        // Walk day by day and check the calendar advances one day at a time.
        let (mut y, mut m, mut d) = (1970, 1, 1);
        for days in 0..146_097 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    fn mb(s: &str) -> Mailbox {
        Mailbox::parse(s).unwrap()
    }

    #[test]
    fn header_for_one_recipient_has_for_clause() {
        let rcpts = [mb("rcpt@example.com")];
        let h = received_header(&ReceivedInfo {
            helo: "helo.name",
            peer: "127.0.0.1".parse().unwrap(),
            hostname: "relay.test",
            protocol: "ESMTP",
            tls: None,
            auth_user: None,
            id: "ID",
            recipients: &rcpts,
            timestamp: 1_795_441_500,
        });
        assert_eq!(
            h,
            "Received: from helo.name ([127.0.0.1])\r\n\tby relay.test (relay) with ESMTP id ID\r\n\tfor <rcpt@example.com>; Mon, 23 Nov 2026 13:45:00 +0000\r\n"
        );
    }

    #[test]
    fn tls_and_login_appear_as_comments_that_cannot_be_broken_out_of() {
        let rcpts = [mb("rcpt@example.com")];
        let h = received_header(&ReceivedInfo {
            helo: "app.test",
            peer: "192.0.2.7".parse().unwrap(),
            hostname: "relay.test",
            protocol: "ESMTPSA",
            tls: Some("TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256"),
            auth_user: Some("app@example.com)\r\nBcc: x"),
            id: "ID",
            recipients: &rcpts,
            timestamp: 1_795_441_500,
        });
        assert_eq!(
            h,
            "Received: from app.test ([192.0.2.7])\r\n\t(using TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256)\r\n\t(Authenticated sender: app@example.com___Bcc: x)\r\n\tby relay.test (relay) with ESMTPSA id ID\r\n\tfor <rcpt@example.com>; Mon, 23 Nov 2026 13:45:00 +0000\r\n"
        );
    }

    #[test]
    fn header_without_single_recipient_omits_for_and_uses_ipv6_literal() {
        let rcpts = [mb("a@x"), mb("b@x")];
        let h = received_header(&ReceivedInfo {
            helo: "bad name;(x)",
            peer: "2001:db8::1".parse().unwrap(),
            hostname: "relay.test",
            protocol: "SMTP",
            tls: None,
            auth_user: None,
            id: "Q1",
            recipients: &rcpts,
            timestamp: 0,
        });
        assert_eq!(
            h,
            "Received: from bad_name__x_ ([IPv6:2001:db8::1])\r\n\tby relay.test (relay) with SMTP id Q1;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
    }

    #[test]
    fn ipv4_mapped_peer_is_written_as_ipv4() {
        let h = received_header(&ReceivedInfo {
            helo: "h",
            peer: "::ffff:192.0.2.7".parse().unwrap(),
            hostname: "r",
            protocol: "ESMTP",
            tls: None,
            auth_user: None,
            id: "i",
            recipients: &[],
            timestamp: 0,
        });
        assert!(h.starts_with("Received: from h ([192.0.2.7])\r\n"), "{h}");
    }

    #[test]
    fn long_helo_is_truncated_so_lines_stay_short() {
        let helo = "x".repeat(2000);
        let h = received_header(&ReceivedInfo {
            helo: &helo,
            peer: "127.0.0.1".parse().unwrap(),
            hostname: "r",
            protocol: "ESMTP",
            tls: None,
            auth_user: None,
            id: "i",
            recipients: &[],
            timestamp: 0,
        });
        assert!(h.split("\r\n").all(|l| l.len() <= 998));
    }
}
