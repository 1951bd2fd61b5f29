//! Bounces: a 5xx or a null MX produces an RFC 3464 DSN at the sender's MX, and never one for the null sender.

use std::net::Ipv4Addr;
use std::time::Duration;

use relay_tests::mime::{status_fields, ParsedMessage};
use relay_tests::{
    field, message, new_message_id, DnsServer, Net, RelayConfig, RelayProcess, Sink, SinkGroup,
    SmtpClient, Transaction, Zone, WAIT,
};

/// The sender's domain (sender.test -> ip(1)) and a destination (dest.test -> ip(2))
/// that refuses `nobody@dest.test` with 550 5.1.1.
async fn bounce_world(net: Net) -> (SinkGroup, DnsServer) {
    let refusing = Sink::builder().rcpt_policy(|rcpt, _| {
        (rcpt == "nobody@dest.test").then(|| (550, "5.1.1 no such user here".to_string()))
    });
    let group = SinkGroup::start(
        vec![(net.ip(1), Sink::builder()), (net.ip(2), refusing)],
        &[],
    )
    .await;
    let dns = DnsServer::start(zone(net.ip(1), net.ip(2))).await;
    (group, dns)
}

fn zone(sender_mx: Ipv4Addr, dest_mx: Ipv4Addr) -> Zone {
    Zone::new()
        .mx("sender.test", 10, "mx.sender.test")
        .a("mx.sender.test", sender_mx)
        .mx("dest.test", 10, "mx.dest.test")
        .a("mx.dest.test", dest_mx)
        .null_mx("nullmx.test")
}

/// Checks the DSN's shape and returns (its parsed message, the delivery-status fields).
fn check_dsn(dsn: &Transaction, sender: &str) -> (ParsedMessage, Vec<(String, String)>) {
    assert_eq!(dsn.mail_from, "", "a DSN is sent from the null sender <>");
    assert_eq!(
        dsn.rcpts,
        vec![sender.to_string()],
        "a DSN goes to the envelope sender"
    );
    let parsed = dsn.message();
    let ct = parsed.content_type();
    assert_eq!(ct.mime_type, "multipart/report", "{:?}", parsed.headers);
    assert!(
        ct.param("report-type")
            .is_some_and(|t| t.eq_ignore_ascii_case("delivery-status")),
        "report-type=delivery-status: {ct:?}"
    );
    let status = parsed
        .find_part("message/delivery-status")
        .unwrap_or_else(|| panic!("no message/delivery-status part:\n{}", dsn.text()));
    let fields = status_fields(&status.body);
    assert!(
        parsed.find_part("text/rfc822-headers").is_some(),
        "no text/rfc822-headers part:\n{}",
        dsn.text()
    );
    (parsed, fields)
}

fn fields_named<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_rcpt_failure_sends_a_dsn_to_the_senders_mx() {
    let net = Net::unique();
    let (group, dns) = bounce_world(net).await;
    // A long retry interval: the DSN must come from the 5xx, not from expiry.
    let config = RelayConfig::new(dns.addr(), group.port).retry_schedule(&["1h"]);
    let relay = RelayProcess::start(&config.to_toml()).await;
    let id = new_message_id();
    let rcpts = ["ok@dest.test", "nobody@dest.test"];
    let body = message(
        "alice@sender.test",
        &rcpts,
        "bounce me",
        &id,
        "the original body",
    );
    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
    let queue_id = client
        .send_mail("alice@sender.test", &rcpts, &body)
        .await
        .expect("accepted");

    let delivered = group.sinks[1].wait_for(1, WAIT).await;
    assert_eq!(delivered[0].rcpts, vec!["ok@dest.test"]);
    let bounced = relay
        .wait_for_event(
            "bounced",
            &[("msg_id", &queue_id), ("rcpt", "nobody@dest.test")],
            WAIT,
        )
        .await;
    assert!(
        field(&bounced, "reply").is_some_and(|r| r.contains("550")),
        "{bounced}"
    );
    relay
        .wait_for_event("dsn_queued", &[("msg_id", &queue_id)], WAIT)
        .await;

    let dsns = group.sinks[0].wait_for(1, WAIT).await;
    let (parsed, fields) = check_dsn(&dsns[0], "alice@sender.test");
    let finals = fields_named(&fields, "Final-Recipient");
    assert_eq!(
        finals.len(),
        1,
        "only the failed recipient is reported: {fields:?}"
    );
    assert!(finals[0].contains("nobody@dest.test"), "{fields:?}");
    assert!(
        fields_named(&fields, "Action")
            .iter()
            .all(|a| a.eq_ignore_ascii_case("failed")),
        "{fields:?}"
    );
    assert_eq!(
        fields_named(&fields, "Status"),
        vec!["5.1.1"],
        "the remote's enhanced code: {fields:?}"
    );
    assert!(
        fields_named(&fields, "Diagnostic-Code")
            .iter()
            .any(|d| d.contains("550")),
        "{fields:?}"
    );
    let headers = parsed
        .find_part("text/rfc822-headers")
        .map(|p| p.body_text())
        .unwrap_or_default();
    assert!(
        headers.contains("Subject: bounce me"),
        "original headers included:\n{headers}"
    );
    assert!(
        headers.contains(&id),
        "original Message-ID included:\n{headers}"
    );
    // Nothing else reached the sender's MX.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(group.sinks[0].messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounce_of_a_null_sender_message_produces_no_dsn() {
    let net = Net::unique();
    let (group, dns) = bounce_world(net).await;
    let config = RelayConfig::new(dns.addr(), group.port).retry_schedule(&["1h"]);
    let relay = RelayProcess::start(&config.to_toml()).await;
    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");

    let null_id = new_message_id();
    let body = message(
        "mailer-daemon@client.test",
        &["nobody@dest.test"],
        "from <>",
        &null_id,
        "x",
    );
    let null_queue_id = client
        .send_mail("", &["nobody@dest.test"], &body)
        .await
        .expect("accepted");
    // A control message that does bounce to a real sender, sent after the first.
    let control_id = new_message_id();
    let body = message(
        "alice@sender.test",
        &["nobody@dest.test"],
        "control",
        &control_id,
        "x",
    );
    let control_queue_id = client
        .send_mail("alice@sender.test", &["nobody@dest.test"], &body)
        .await
        .expect("accepted");

    relay
        .wait_for_event("bounced", &[("msg_id", &null_queue_id)], WAIT)
        .await;
    relay
        .wait_for_event("dsn_queued", &[("msg_id", &control_queue_id)], WAIT)
        .await;
    let dsns = group.sinks[0].wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;

    assert!(
        relay
            .events("dsn_queued", &[("msg_id", &null_queue_id)])
            .is_empty(),
        "no DSN for a message from <>\n{}",
        relay.describe()
    );
    let dsns_now = group.sinks[0].messages();
    assert_eq!(dsns_now.len(), 1, "only the control's DSN: {dsns_now:#?}");
    let (parsed, _) = check_dsn(&dsns[0], "alice@sender.test");
    let headers = parsed
        .find_part("text/rfc822-headers")
        .map(|p| p.body_text())
        .unwrap_or_default();
    assert!(
        headers.contains(&control_id) && !headers.contains(&null_id),
        "{headers}"
    );
    assert!(group.sinks[1].messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_mx_domain_bounces_at_once_with_status_5_1_10() {
    let net = Net::unique();
    let (group, dns) = bounce_world(net).await;
    let config = RelayConfig::new(dns.addr(), group.port).retry_schedule(&["1h"]);
    let relay = RelayProcess::start(&config.to_toml()).await;
    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
    let id = new_message_id();
    let body = message(
        "alice@sender.test",
        &["x@nullmx.test"],
        "to a null MX",
        &id,
        "x",
    );
    let queue_id = client
        .send_mail("alice@sender.test", &["x@nullmx.test"], &body)
        .await
        .expect("accepted");
    relay
        .wait_for_event(
            "bounced",
            &[("msg_id", &queue_id), ("rcpt", "x@nullmx.test")],
            WAIT,
        )
        .await;
    let dsns = group.sinks[0].wait_for(1, WAIT).await;
    let (_, fields) = check_dsn(&dsns[0], "alice@sender.test");
    assert!(fields_named(&fields, "Final-Recipient")
        .iter()
        .any(|f| f.contains("x@nullmx.test")));
    assert_eq!(
        fields_named(&fields, "Status"),
        vec!["5.1.10"],
        "RFC 7505 3.3: {fields:?}"
    );
    assert!(
        relay
            .events("deferred", &[("msg_id", &queue_id)])
            .is_empty(),
        "no retry for a null MX"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_still_deferred_at_max_age_bounces_with_status_5_4_7() {
    let net = Net::unique();
    let always_busy = Sink::builder().rcpt_policy(|rcpt, _| {
        (rcpt == "later@dest.test").then(|| (451, "4.3.0 try again later".to_string()))
    });
    let group = SinkGroup::start(
        vec![(net.ip(1), Sink::builder()), (net.ip(2), always_busy)],
        &[],
    )
    .await;
    let dns = DnsServer::start(zone(net.ip(1), net.ip(2))).await;
    let config = RelayConfig::new(dns.addr(), group.port)
        .retry_schedule(&["1s"])
        .set("delivery", "max_age", "\"3s\"");
    let relay = RelayProcess::start(&config.to_toml()).await;
    let body = message(
        "alice@sender.test",
        &["later@dest.test"],
        "expire me",
        &new_message_id(),
        "x",
    );
    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
    let queue_id = client
        .send_mail("alice@sender.test", &["later@dest.test"], &body)
        .await
        .expect("accepted");

    let bounced = relay
        .wait_for_event("bounced", &[("msg_id", &queue_id)], WAIT)
        .await;
    assert!(
        field(&bounced, "reply").is_some_and(|r| r.contains("5.4.7") && r.contains("451")),
        "the expiry bounce names the last error: {bounced}"
    );
    let deferrals = relay.events("deferred", &[("msg_id", &queue_id)]);
    assert!(deferrals.len() >= 2, "retried until max_age: {deferrals:?}");

    let dsns = group.sinks[0].wait_for(1, WAIT).await;
    let (_, fields) = check_dsn(&dsns[0], "alice@sender.test");
    assert_eq!(fields_named(&fields, "Status"), vec!["5.4.7"], "{fields:?}");
    assert_eq!(
        fields_named(&fields, "Action"),
        vec!["failed"],
        "{fields:?}"
    );
}
