//! The inbound SMTP side: relay access, size/recipient/line limits, enhanced codes, BDAT, pipelining rules.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use relay_tests::client::Reply;
use relay_tests::{message, new_message_id, relay_with_sink, SmtpClient, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_outside_relay_networks_is_denied_at_rcpt() {
    let (_sink, _dns, relay) = relay_with_sink(|c| c.relay_networks(&["127.0.0.1/32"])).await;
    let outsider = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut c = SmtpClient::connect_from(outsider, relay.addr())
        .await
        .expect("connect from 127.0.0.2");
    assert!(c.ehlo("outsider.test").await.expect("ehlo").is_positive());
    let mail = c.command("MAIL FROM:<a@outside.test>").await.expect("mail");
    assert_eq!(mail.code, 250, "{mail}");
    let rcpt = c.command("RCPT TO:<b@elsewhere.test>").await.expect("rcpt");
    rcpt.assert_is(554, "5.7.1");

    // The same from inside the network is accepted.
    let insider = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut c = SmtpClient::connect_from(insider, relay.addr())
        .await
        .expect("connect from 127.0.0.1");
    c.ehlo("insider.test").await.expect("ehlo");
    c.command("MAIL FROM:<a@inside.test>").await.expect("mail");
    let rcpt = c.command("RCPT TO:<b@elsewhere.test>").await.expect("rcpt");
    assert_eq!(rcpt.code, 250, "{rcpt}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_declared_at_mail_over_the_limit_is_refused() {
    let (_sink, _dns, relay) = relay_with_sink(|c| c.max_message_size(10_000)).await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    let ehlo = c.ehlo("client.test").await.expect("ehlo");
    assert!(
        ehlo.lines
            .iter()
            .any(|l| l.trim().eq_ignore_ascii_case("SIZE 10000")),
        "EHLO advertises the limit (RFC 1870): {ehlo}"
    );
    let r = c
        .command("MAIL FROM:<a@x.test> SIZE=20000")
        .await
        .expect("mail");
    r.assert_is(552, "5.3.4");
    let r = c
        .command("MAIL FROM:<a@x.test> SIZE=5000")
        .await
        .expect("mail");
    assert_eq!(r.code, 250, "a size under the limit is fine: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_data_without_size_is_refused_and_not_queued() {
    let (sink, _dns, relay) = relay_with_sink(|c| c.max_message_size(10_000)).await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    c.ehlo("client.test").await.expect("ehlo");
    assert_eq!(
        c.command("MAIL FROM:<a@x.test>").await.expect("mail").code,
        250
    );
    assert_eq!(
        c.command("RCPT TO:<b@y.test>").await.expect("rcpt").code,
        250
    );
    assert_eq!(c.command("DATA").await.expect("data").code, 354);
    let big_line = "y".repeat(76);
    let body_text = vec![big_line.as_str(); 300].join("\n");
    let body = message(
        "a@x.test",
        &["b@y.test"],
        "too big",
        &new_message_id(),
        &body_text,
    );
    assert!(body.len() > 20_000);
    let r = c.data_body(&body).await.expect("reply to end of data");
    r.assert_is(552, "5.3.4");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        relay.events("received", &[]).is_empty(),
        "nothing queued\n{}",
        relay.describe()
    );
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_beyond_the_limit_get_452_and_the_rest_is_delivered() {
    let (sink, _dns, relay) = relay_with_sink(|c| c.max_recipients(3)).await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    c.ehlo("client.test").await.expect("ehlo");
    assert_eq!(
        c.command("MAIL FROM:<a@x.test>").await.expect("mail").code,
        250
    );
    for i in 1..=3 {
        let r = c
            .command(&format!("RCPT TO:<r{i}@y.test>"))
            .await
            .expect("rcpt");
        assert_eq!(r.code, 250, "{r}");
    }
    let r = c.command("RCPT TO:<r4@y.test>").await.expect("rcpt");
    r.assert_is(452, "4.5.3");
    assert_eq!(c.command("DATA").await.expect("data").code, 354);
    let body = message("a@x.test", &["r1@y.test"], "limit", &new_message_id(), "x");
    let r = c.data_body(&body).await.expect("end of data");
    assert_eq!(r.code, 250, "{r}");
    let m = sink.wait_for(1, WAIT).await;
    assert_eq!(m[0].rcpts, vec!["r1@y.test", "r2@y.test", "r3@y.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_longer_than_the_limit_gets_500_5_5_2() {
    let (_sink, _dns, relay) =
        relay_with_sink(|c| c.set("server", "max_line_length", "1000")).await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    c.ehlo("client.test").await.expect("ehlo");
    // 1000 bytes including CRLF is the longest allowed line (RFC 5321 4.5.3.1.4).
    let at_limit = format!("NOOP {}", "x".repeat(1000 - 5 - 2));
    let r = c.command(&at_limit).await.expect("noop at the limit");
    assert_eq!(r.code, 250, "a 1000-byte line is allowed: {r}");
    let over = format!("NOOP {}", "x".repeat(1000 - 5 - 2 + 1));
    let r = c.command(&over).await.expect("reply to the long line");
    r.assert_is(500, "5.5.2");
    // The rest of the long line is not taken for a command: the session goes on.
    let r = c.command("NOOP").await.expect("noop after");
    assert_eq!(r.code, 250, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_in_a_normal_session_has_an_enhanced_code() {
    let (sink, _dns, relay) = relay_with_sink(|c| c).await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    assert_eq!(c.greeting().code, 220);
    let ehlo = c.ehlo("client.test").await.expect("ehlo");
    for ext in [
        "PIPELINING",
        "SIZE",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
    ] {
        assert!(ehlo.has_extension(ext), "EHLO advertises {ext}: {ehlo}");
    }
    let mut replies = Vec::new();
    for cmd in [
        "NOOP",
        "HELP",
        "VRFY someone",
        "MAIL FROM:<a@x.test>",
        "RCPT TO:<b@y.test>",
        "RSET",
        "FOOBAR",
    ] {
        replies.push((cmd.to_string(), c.command(cmd).await.expect(cmd)));
    }
    assert_eq!(replies[2].1.code, 252, "VRFY: {}", replies[2].1);
    assert_eq!(
        replies[6].1.code / 100,
        5,
        "unknown command: {}",
        replies[6].1
    );
    // With PIPELINING advertised, MAIL/RCPT/DATA may go in one write (RFC 2920).
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        .await
        .expect("send");
    for cmd in ["MAIL (pipelined)", "RCPT (pipelined)"] {
        let r = c.read_reply().await.expect(cmd);
        assert_eq!(r.code, 250, "{cmd}: {r}");
        replies.push((cmd.to_string(), r));
    }
    let data = c.read_reply().await.expect("DATA");
    assert_eq!(data.code, 354, "{data}");
    let body = message("a@x.test", &["b@y.test"], "codes", &new_message_id(), "x");
    let r = c.data_body(&body).await.expect("end of data");
    assert_eq!(r.code, 250, "{r}");
    assert!(r.queue_id().is_some(), "250 ... queued as ID: {r}");
    replies.push(("end of data".into(), r));
    let quit = c.quit().await.expect("quit");
    assert_eq!(quit.code, 221);
    replies.push(("QUIT".into(), quit));
    // RFC 2034: every reply but the greeting, EHLO's and 354 (class 3 has no enhanced code).
    for (cmd, r) in &replies {
        assert!(r.every_line_has_enhanced_code(), "{cmd} -> {r}");
    }
    sink.wait_for(1, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdat_chunks_are_joined_and_dot_lines_survive_delivery() {
    let (sink, _dns, relay) = relay_with_sink(|c| c).await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    c.ehlo("client.test").await.expect("ehlo");
    assert_eq!(
        c.command("MAIL FROM:<a@x.test>").await.expect("mail").code,
        250
    );
    assert_eq!(
        c.command("RCPT TO:<b@y.test>").await.expect("rcpt").code,
        250
    );
    let id = new_message_id();
    let whole = message(
        "a@x.test",
        &["b@y.test"],
        "chunks",
        &id,
        "first\n.\n..two dots\n.\nlast",
    );
    let (one, two) = whole.split_at(whole.len() / 2);
    let mut chunk = format!("BDAT {}\r\n", one.len()).into_bytes();
    chunk.extend_from_slice(one);
    c.send(&chunk).await.expect("send chunk 1");
    let r = c.read_reply().await.expect("chunk 1");
    assert_eq!(r.code, 250, "{r}");
    let mut chunk = format!("BDAT {} LAST\r\n", two.len()).into_bytes();
    chunk.extend_from_slice(two);
    c.send(&chunk).await.expect("send chunk 2");
    let r = c.read_reply().await.expect("last chunk");
    assert_eq!(r.code, 250, "{r}");
    assert!(r.queue_id().is_some(), "{r}");
    let m = sink.wait_for(1, WAIT).await;
    // BDAT data is not dot-stuffed; the relay must stuff it for the DATA it sends.
    let text = m[0].text();
    assert!(
        text.ends_with(&String::from_utf8_lossy(&whole).into_owned()),
        "{text:?}"
    );
    assert!(
        text.contains("\r\nfirst\r\n.\r\n..two dots\r\n.\r\nlast\r\n"),
        "{text:?}"
    );
    assert_eq!(sink.transactions_started(), 1);
}

/// Reads to the end of the session and checks the RFC 2920 refusal: `554 5.5.0`, the
/// connection closed, and DATA never accepted. Returns the replies seen.
async fn expect_sync_error_and_close(c: &mut SmtpClient) -> Vec<Reply> {
    let (replies, closed) = c.read_until_closed(Duration::from_secs(5)).await;
    assert!(
        replies
            .iter()
            .any(|r| r.code == 554 && r.enhanced().as_deref() == Some("5.5.0")),
        "554 5.5.0 expected: {replies:?}"
    );
    assert!(closed, "the connection is closed after 554: {replies:?}");
    assert!(
        replies.iter().all(|r| r.code != 354),
        "DATA must not be accepted: {replies:?}"
    );
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sent_with_ehlo_before_its_reply_are_refused() {
    let (_sink, _dns, relay) = relay_with_sink(|c| c).await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    // PIPELINING is not known before the EHLO reply, so nothing may follow EHLO in the same write.
    c.send(b"EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        .await
        .expect("send");
    let replies = expect_sync_error_and_close(&mut c).await;
    assert!(
        replies.iter().filter(|r| r.is_positive()).count() <= 1,
        "at most EHLO succeeds: {replies:?}"
    );
    assert!(relay.events("received", &[]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_pipelined_after_helo_are_refused() {
    let (_sink, _dns, relay) = relay_with_sink(|c| c).await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    let helo = c.command("HELO client.test").await.expect("helo");
    assert_eq!(helo.code, 250, "{helo}");
    // HELO advertises nothing, so this client may not pipeline.
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        .await
        .expect("send");
    expect_sync_error_and_close(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_ip_limit_get_421_and_the_slot_frees_on_close() {
    let (_sink, _dns, relay) =
        relay_with_sink(|c| c.set("server", "max_connections_per_ip", "2")).await;
    let first = SmtpClient::connect(relay.addr()).await.expect("first");
    let second = SmtpClient::connect(relay.addr()).await.expect("second");
    let mut third = SmtpClient::connect_raw(relay.addr()).await.expect("third");
    let (replies, closed) = third.read_until_closed(Duration::from_secs(5)).await;
    assert!(closed, "the third connection is closed: {replies:?}");
    assert_eq!(replies.len(), 1, "{replies:?}");
    replies[0].assert_is(421, "4.7.0");

    // Another client address is counted on its own.
    let other = SmtpClient::connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), relay.addr())
        .await
        .expect("other ip");
    assert_eq!(other.greeting().code, 220);

    // Closing one frees its place.
    first.quit().await.expect("quit");
    drop(second);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let c = SmtpClient::connect_raw(relay.addr())
            .await
            .expect("connect");
        let mut c = c;
        let (replies, _) = c.read_until_closed(Duration::from_millis(500)).await;
        if replies.first().is_some_and(|r| r.code == 220) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot never freed: {replies:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_is_told_421_4_4_2_and_disconnected_after_command_timeout() {
    let (_sink, _dns, relay) =
        relay_with_sink(|c| c.set("server", "command_timeout", "\"1s\"")).await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    c.ehlo("slow.test").await.expect("ehlo");
    let started = std::time::Instant::now();
    let (replies, closed) = c.read_until_closed(Duration::from_secs(10)).await;
    assert!(closed, "{replies:?}");
    assert_eq!(replies.len(), 1, "{replies:?}");
    replies[0].assert_is(421, "4.4.2");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_with_more_received_headers_than_max_hops_is_refused_as_a_loop() {
    let (sink, _dns, relay) = relay_with_sink(|c| c.set("server", "max_hops", "5")).await;
    let trace = "Received: from a by b; Mon, 23 Nov 2026 10:00:00 +0000\r\n";
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    let looped = format!("{}{}", trace.repeat(6), "Subject: loop\r\n\r\nbody\r\n");
    let err = c
        .send_mail("a@x.test", &["b@y.test"], looped.as_bytes())
        .await
        .expect_err("refused");
    err.reply().expect("reply").assert_is(554, "5.4.6");
    // At the limit it is accepted, and our own Received makes it one more downstream.
    let fine = format!(
        "{}{}",
        trace.repeat(5),
        "From: a@x.test\r\nSubject: ok\r\n\r\nbody\r\n"
    );
    c.send_mail("a@x.test", &["b@y.test"], fine.as_bytes())
        .await
        .expect("accepted");
    let got = sink.wait_for(1, WAIT).await;
    let text = String::from_utf8_lossy(&got[0].data).to_string();
    assert_eq!(text.matches("Received:").count(), 6, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_line_longer_than_the_limit_is_refused_at_end_of_data() {
    let (sink, _dns, relay) = relay_with_sink(|c| c).await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    let long = format!("Subject: long\r\n\r\n{}\r\nnext line\r\n", "x".repeat(999));
    let err = c
        .send_mail("a@x.test", &["b@y.test"], long.as_bytes())
        .await
        .expect_err("refused");
    err.reply().expect("reply").assert_is(500, "5.5.2");
    // The session stays usable and a 998-octet line (1000 with CRLF) is fine.
    let ok = format!(
        "From: a@x.test\r\nSubject: ok\r\n\r\n{}\r\n",
        "x".repeat(998)
    );
    c.send_mail("a@x.test", &["b@y.test"], ok.as_bytes())
        .await
        .expect("accepted");
    assert_eq!(sink.wait_for(1, WAIT).await.len(), 1);
}
