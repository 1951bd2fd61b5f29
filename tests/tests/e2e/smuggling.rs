//! SMTP smuggling (SEC Consult, 2023): only `<CRLF>.<CRLF>` ends DATA, so a transaction hidden
//! behind a bare-LF/CR "end of data" never becomes a second message, at the relay or downstream.
//!
//! Each published sequence runs against both `bare_line_ending` modes: "reject"
//! must refuse the message. "normalize" turns a bare LF into CRLF, so a payload
//! with only bare LFs must be queued exactly once and delivered with clean CRLF
//! lines (any `.` line it creates dot-stuffed); a bare CR has no agreed
//! normalisation, so a payload with one may be refused instead (the relay
//! refuses bare CR in both modes) but never queued twice.

use std::time::Duration;

use relay_tests::{
    new_message_id, DnsServer, Net, RelayConfig, RelayProcess, Sink, SmtpClient, Zone, WAIT,
};

const SMUGGLED: &[u8] = b"MAIL FROM:<smuggler@evil.test>\r\n\
RCPT TO:<victim@dest.test>\r\n\
DATA\r\n\
From: <smuggler@evil.test>\r\n\
To: <victim@dest.test>\r\n\
Subject: smuggled\r\n\
\r\n\
smuggled body\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Reject,
    Normalize,
}

async fn smuggle(sequence: &[u8], mode: Mode) {
    let net = Net::unique();
    let sink = Sink::start(net.ip(1)).await;
    let dns = DnsServer::start(Zone::new()).await;
    let config = RelayConfig::new(dns.addr(), 9)
        .route("*", &sink.addr().to_string())
        .bare_line_ending(match mode {
            Mode::Reject => "reject",
            Mode::Normalize => "normalize",
        });
    let relay = RelayProcess::start(&config.to_toml()).await;

    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    c.ehlo("client.test").await.expect("ehlo");
    assert_eq!(
        c.command("MAIL FROM:<alice@sender.test>")
            .await
            .expect("mail")
            .code,
        250
    );
    assert_eq!(
        c.command("RCPT TO:<bob@dest.test>")
            .await
            .expect("rcpt")
            .code,
        250
    );
    assert_eq!(c.command("DATA").await.expect("data").code, 354);
    let id = new_message_id();
    let mut payload = format!(
        "From: <alice@sender.test>\r\nTo: <bob@dest.test>\r\nSubject: smuggling\r\nMessage-ID: <{id}>\r\n\r\nfirst part"
    )
    .into_bytes();
    payload.extend_from_slice(sequence);
    payload.extend_from_slice(SMUGGLED);
    payload.extend_from_slice(b"\r\n.\r\n");
    c.send(&payload).await.expect("send the payload");
    let (replies, _closed) = c.read_until_closed(Duration::from_secs(2)).await;

    assert_eq!(
        replies.len(),
        1,
        "the whole payload is one DATA, answered once; more replies mean the smuggled commands ran: {replies:?}"
    );
    let reply = &replies[0];
    let refused = match mode {
        Mode::Reject => true,
        Mode::Normalize => has_bare_cr(&payload) && reply.code / 100 == 5,
    };
    if refused {
        assert_eq!(
            reply.code / 100,
            5,
            "bare line endings are refused: {reply}"
        );
        assert!(reply.every_line_has_enhanced_code(), "{reply}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            relay.events("received", &[]).is_empty(),
            "nothing queued\n{}",
            relay.describe()
        );
        assert_eq!(sink.transactions_started(), 0);
    } else {
        assert_eq!(reply.code, 250, "{reply}");
        let queue_id = reply
            .queue_id()
            .unwrap_or_else(|| panic!("no queue id in {reply}"));
        relay
            .wait_for_event(
                "delivered",
                &[("msg_id", &queue_id), ("rcpt", "bob@dest.test")],
                WAIT,
            )
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let received = relay.events("received", &[]);
        assert_eq!(
            received.len(),
            1,
            "exactly one message queued: {received:?}"
        );
        let messages = sink.messages();
        assert_eq!(messages.len(), 1, "{messages:#?}");
        assert_eq!(messages[0].mail_from, "alice@sender.test");
        assert_eq!(messages[0].rcpts, vec!["bob@dest.test"]);
        assert_eq!(messages[0].header("message-id"), Some(format!("<{id}>")));
        assert!(
            !messages[0].bare_line_endings,
            "normalized mail leaves with CRLF lines only: {:?}",
            messages[0].text()
        );
        assert_eq!(sink.transactions_started(), 1);
    }
    let commands = sink.commands();
    assert!(
        commands.iter().all(|c| !c.contains("smuggler@evil.test")),
        "the smuggled transaction reached the MX as commands: {commands:?}"
    );
}

/// A CR not followed by LF.
fn has_bare_cr(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
}

macro_rules! smuggling_tests {
    ($($name:ident: $sequence:expr;)*) => {
        mod rejecting {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    smuggle($sequence, Mode::Reject).await;
                }
            )*
        }
        mod normalizing {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    smuggle($sequence, Mode::Normalize).await;
                }
            )*
        }
    };
}

smuggling_tests! {
    lf_dot_lf_does_not_end_data: b"\n.\n";
    lf_dot_crlf_does_not_end_data: b"\n.\r\n";
    cr_dot_cr_does_not_end_data: b"\r.\r";
    cr_dot_crlf_does_not_end_data: b"\r.\r\n";
    crlf_dot_lf_does_not_end_data: b"\r\n.\n";
    crlf_dot_cr_does_not_end_data: b"\r\n.\r";
    cr_crlf_dot_cr_crlf_does_not_end_data: b"\r\r\n.\r\r\n";
}
