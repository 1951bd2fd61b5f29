//! Bounces that come back later: RFC 3464 DSNs sent to a `[bounces]` domain are taken from any
//! client, shown to on_bounce (here the suppression plugin learns from them) and dropped.

use std::net::IpAddr;

use relay_tests::config::toml_array;
use relay_tests::plugins;
use relay_tests::{
    field, message, new_message_id, DnsServer, Net, RelayConfig, RelayProcess, Reply, Sink,
    SmtpClient, Zone, WAIT,
};

/// A Postfix-style DSN to `to` reporting `status` (with `diagnostic`) for `rcpt`, returning
/// `headers` (the original message's header section) as text/rfc822-headers.
fn dsn(to: &str, rcpt: &str, status: &str, diagnostic: &str, headers: &str) -> Vec<u8> {
    format!(
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n\
         To: {to}\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Message-ID: <{}>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"R1\"\r\n\
         \r\n\
         --R1\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         Your message could not be delivered.\r\n\
         \r\n\
         --R1\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; mx.example.net\r\n\
         \r\n\
         Final-Recipient: rfc822; {rcpt}\r\n\
         Action: failed\r\n\
         Status: {status}\r\n\
         Remote-MTA: dns; mailstore.example.net\r\n\
         Diagnostic-Code: smtp; {diagnostic}\r\n\
         \r\n\
         --R1\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n\
         {headers}\
         \r\n\
         --R1--\r\n",
        new_message_id()
    )
    .into_bytes()
}

/// The header section of a message as the sink received it.
fn header_section(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    match text.find("\r\n\r\n") {
        Some(end) => text[..end + 2].to_string(),
        None => text.into_owned(),
    }
}

/// Sends `body` from `<>` to `rcpt` and returns the reply to the end of data (or the first
/// refusal on the way).
async fn send_dsn(c: &mut SmtpClient, rcpt: &str, body: &[u8]) -> Reply {
    let mail = c.command("MAIL FROM:<>").await.expect("mail");
    assert_eq!(mail.code, 250, "{mail}");
    let r = c.command(&format!("RCPT TO:<{rcpt}>")).await.expect("rcpt");
    if r.code != 250 {
        return r;
    }
    let data = c.command("DATA").await.expect("data");
    assert_eq!(data.code, 354, "{data}");
    c.data_body(body).await.expect("end of data")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_dsn_from_outside_teaches_suppression_and_is_never_relayed() {
    let net = Net::unique();
    let (inside, outside) = (net.ip(10), net.ip(11));
    let sink = Sink::start(net.ip(1)).await;
    let dns = DnsServer::start(Zone::new()).await;
    let dir = tempfile::tempdir().expect("dir");
    plugins::install("suppression", dir.path(), "suppression");
    let config = RelayConfig::new(dns.addr(), 9)
        .route("*", &sink.addr().to_string())
        .relay_networks(&[&format!("{inside}/32")])
        .set("bounces", "domains", &toml_array(&["bounces.test"]))
        .plugins_dir(dir.path());
    let relay = RelayProcess::start(&config.to_toml()).await;
    relay
        .wait_for_event("plugin_loaded", &[("plugin", "suppression")], WAIT)
        .await;

    // A message the relay delivers (the MX takes it, then bounces it later).
    let mut insider = SmtpClient::connect_from(IpAddr::V4(inside), relay.addr())
        .await
        .expect("connect from inside");
    let id = insider
        .send_mail(
            "b@bounces.test",
            &["gone@example.net"],
            &message(
                "a@sender.test",
                &["gone@example.net"],
                "hi",
                &new_message_id(),
                "x",
            ),
        )
        .await
        .expect("queued");
    let delivered = sink.wait_for(1, WAIT).await;
    let returned_headers = header_section(&delivered[0].data);

    // The receiver's DSN comes back from a client outside relay_networks.
    let mut outsider = SmtpClient::connect_from(IpAddr::V4(outside), relay.addr())
        .await
        .expect("connect from outside");
    assert!(outsider
        .ehlo("mx.example.net")
        .await
        .expect("ehlo")
        .is_positive());
    let hard = dsn(
        "b@bounces.test",
        "gone@example.net",
        "5.1.1",
        "550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown",
        &returned_headers,
    );
    let r = send_dsn(&mut outsider, "b@bounces.test", &hard).await;
    assert_eq!(r.code, 250, "{r}");
    let event = relay
        .wait_for_event(
            "bounce_returned",
            &[("rcpt", "gone@example.net"), ("status", "5.1.1")],
            WAIT,
        )
        .await;
    assert_eq!(
        field(&event, "msg_id").as_deref(),
        Some(id.as_str()),
        "{event}"
    );
    assert_eq!(
        field(&event, "class").as_deref(),
        Some("invalid-recipient"),
        "{event}"
    );
    assert_eq!(
        field(&event, "mx").as_deref(),
        Some("mailstore.example.net"),
        "{event}"
    );

    // A full mailbox is temporary: reported, but nothing is suppressed.
    let soft = dsn(
        "b@bounces.test",
        "full@example.net",
        "4.2.2",
        "452 4.2.2 Mailbox full",
        "Message-ID: <x@sender.test>\r\n",
    );
    let r = send_dsn(&mut outsider, "b@bounces.test", &soft).await;
    assert_eq!(r.code, 250, "{r}");
    let event = relay
        .wait_for_event(
            "bounce_returned",
            &[("rcpt", "full@example.net"), ("status", "4.2.2")],
            WAIT,
        )
        .await;
    assert_eq!(
        field(&event, "action").as_deref(),
        Some("no-opinion"),
        "{event}"
    );

    // Not a DSN at all: still 250 (no backscatter), logged and dropped.
    let chat = message(
        "x@outside.test",
        &["b@bounces.test"],
        "hello",
        &new_message_id(),
        "hi",
    );
    let r = send_dsn(&mut outsider, "b@bounces.test", &chat).await;
    assert_eq!(r.code, 250, "{r}");
    relay
        .wait_for_event("bounce_unparsed", &[("to", "b@bounces.test")], WAIT)
        .await;

    // Other recipients from outside are still not relayed.
    outsider
        .command("MAIL FROM:<a@outside.test>")
        .await
        .expect("mail");
    let r = outsider
        .command("RCPT TO:<someone@example.net>")
        .await
        .expect("rcpt");
    assert_eq!(
        (r.code, r.enhanced().as_deref()),
        (554, Some("5.7.1")),
        "{r}"
    );

    // The suppression plugin learnt from the returned DSN; the soft bounce changed nothing.
    insider
        .command("MAIL FROM:<a@sender.test>")
        .await
        .expect("mail");
    let r = insider
        .command("RCPT TO:<gone@example.net>")
        .await
        .expect("rcpt");
    assert_eq!(
        (r.code, r.enhanced().as_deref()),
        (550, Some("5.1.1")),
        "{r}"
    );
    assert!(r.text().contains("suppressed"), "{r}");
    let r = insider
        .command("RCPT TO:<full@example.net>")
        .await
        .expect("rcpt");
    assert_eq!(r.code, 250, "{r}");
    // One transaction never mixes bounce and other recipients.
    let r = insider
        .command("RCPT TO:<b@bounces.test>")
        .await
        .expect("rcpt");
    assert_eq!(
        (r.code, r.enhanced().as_deref()),
        (452, Some("4.5.3")),
        "{r}"
    );
    let data = insider.command("DATA").await.expect("data");
    assert_eq!(data.code, 354, "{data}");
    let r = insider
        .data_body(&message(
            "a@sender.test",
            &["full@example.net"],
            "again",
            &new_message_id(),
            "y",
        ))
        .await
        .expect("end of data");
    assert_eq!(r.code, 250, "{r}");

    // The sink got the two real messages and none of the DSNs.
    sink.wait_for(2, WAIT).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let all = sink.transactions();
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(
        all.iter()
            .all(|t| t.rcpts.iter().all(|r| !r.ends_with("@bounces.test"))),
        "{all:?}"
    );
}
