//! Delivery through MX lookups on the test's DNS server: per-domain routing, MX preference, A fallback, routes, retries, caching.

use std::collections::BTreeSet;
use std::time::Duration;

use relay_tests::{
    message, new_message_id, DnsServer, Net, RecordType, RelayConfig, RelayProcess, Sink,
    SinkBuilder, SinkGroup, SmtpClient, Transaction, Zone, WAIT,
};

fn rcpt_set(messages: &[Transaction]) -> BTreeSet<String> {
    messages
        .iter()
        .flat_map(|m| m.rcpts.iter().cloned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_to_two_domains_reaches_each_domains_mx_with_only_its_recipients() {
    let net = Net::unique();
    let group = SinkGroup::start(
        vec![(net.ip(1), Sink::builder()), (net.ip(2), Sink::builder())],
        &[],
    )
    .await;
    let dns = DnsServer::start(
        Zone::new()
            .mx("one.test", 10, "mx.one.test")
            .a("mx.one.test", net.ip(1))
            .mx("two.test", 10, "mx.two.test")
            .a("mx.two.test", net.ip(2)),
    )
    .await;
    let relay = RelayProcess::start(&RelayConfig::new(dns.addr(), group.port).to_toml()).await;

    let rcpts = [
        "a@one.test",
        "b@one.test",
        "c@two.test",
        "d@two.test",
        "e@two.test",
    ];
    let id = new_message_id();
    let body = message(
        "sender@client.test",
        &rcpts,
        "two domains",
        &id,
        "hello both",
    );
    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
    let queue_id = client
        .send_mail("sender@client.test", &rcpts, &body)
        .await
        .expect("accepted");

    relay
        .wait_for_events("delivered", &[("msg_id", &queue_id)], rcpts.len(), WAIT)
        .await;
    let received = relay
        .wait_for_event("received", &[("msg_id", &queue_id)], WAIT)
        .await;
    assert_eq!(relay_tests::field(&received, "rcpts").as_deref(), Some("5"));

    let one = group.sinks[0].messages();
    let two = group.sinks[1].messages();
    assert_eq!(one.len(), 1, "one transaction per domain: {one:#?}");
    assert_eq!(two.len(), 1, "one transaction per domain: {two:#?}");
    assert_eq!(rcpt_set(&one), set(&["a@one.test", "b@one.test"]));
    assert_eq!(
        rcpt_set(&two),
        set(&["c@two.test", "d@two.test", "e@two.test"])
    );
    for m in one.iter().chain(two.iter()) {
        assert_eq!(
            m.helo, "relay.test",
            "the relay's EHLO name is [server] hostname"
        );
        assert!(m.esmtp, "the relay uses EHLO");
        assert_eq!(m.mail_from, "sender@client.test");
        assert!(!m.bare_line_endings, "the relay sends CRLF lines only");
        let parsed = m.message();
        let (first_name, first_value) = &parsed.headers[0];
        assert!(
            first_name.eq_ignore_ascii_case("received"),
            "a Received header is prepended: {:?}",
            parsed.headers
        );
        assert!(
            first_value.contains("relay.test"),
            "Received names the relay: {first_value}"
        );
        assert_eq!(
            parsed.header("message-id"),
            Some(format!("<{id}>").as_str())
        );
        assert!(m.text().contains("hello both"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_preference_number_mx_is_used_when_both_are_up() {
    let net = Net::unique();
    let group = SinkGroup::start(
        vec![(net.ip(1), Sink::builder()), (net.ip(2), Sink::builder())],
        &[],
    )
    .await;
    let dns = DnsServer::start(
        Zone::new()
            .mx("pref.test", 20, "backup.pref.test")
            .mx("pref.test", 10, "primary.pref.test")
            .a("primary.pref.test", net.ip(1))
            .a("backup.pref.test", net.ip(2)),
    )
    .await;
    let relay = RelayProcess::start(&RelayConfig::new(dns.addr(), group.port).to_toml()).await;
    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
    for i in 0..3 {
        let body = message(
            "s@client.test",
            &["r@pref.test"],
            &format!("pref {i}"),
            &new_message_id(),
            "x",
        );
        client
            .send_mail("s@client.test", &["r@pref.test"], &body)
            .await
            .expect("accepted");
    }
    group.sinks[0].wait_for(3, WAIT).await;
    assert_eq!(
        group.sinks[1].connections(),
        0,
        "the backup MX is not used while the primary works"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_first_mx_falls_back_to_the_second() {
    let net = Net::unique();
    // Nothing listens on ip(1):port (connections are refused): the preferred MX is down.
    let group = SinkGroup::start(vec![(net.ip(2), Sink::builder())], &[net.ip(1)]).await;
    let dns = DnsServer::start(
        Zone::new()
            .mx("fallback.test", 10, "mx1.fallback.test")
            .mx("fallback.test", 20, "mx2.fallback.test")
            .a("mx1.fallback.test", net.ip(1))
            .a("mx2.fallback.test", net.ip(2)),
    )
    .await;
    // A long retry interval: only trying the next MX within the same attempt passes.
    let config = RelayConfig::new(dns.addr(), group.port).retry_schedule(&["1h"]);
    let relay = RelayProcess::start(&config.to_toml()).await;
    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
    let id = new_message_id();
    let body = message("s@client.test", &["r@fallback.test"], "fallback", &id, "x");
    let queue_id = client
        .send_mail("s@client.test", &["r@fallback.test"], &body)
        .await
        .expect("accepted");
    let m = group.sinks[0].wait_for(1, WAIT).await;
    assert_eq!(m[0].rcpts, vec!["r@fallback.test"]);
    relay
        .wait_for_event(
            "delivered",
            &[("msg_id", &queue_id), ("rcpt", "r@fallback.test")],
            WAIT,
        )
        .await;
    assert!(
        dns.query_count("mx1.fallback.test", RecordType::A) >= 1,
        "mx1 was considered first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_rcpt_failure_is_retried_without_resending_to_delivered_recipients() {
    let net = Net::unique();
    let sink = Sink::builder().rcpt_policy(|rcpt, attempt| {
        (rcpt == "later@retry.test" && attempt == 1)
            .then(|| (451, "4.3.0 try again later".to_string()))
    });
    let group = SinkGroup::start(vec![(net.ip(1), sink)], &[]).await;
    let dns = DnsServer::start(
        Zone::new()
            .mx("retry.test", 10, "mx.retry.test")
            .a("mx.retry.test", net.ip(1)),
    )
    .await;
    let config = RelayConfig::new(dns.addr(), group.port).retry_schedule(&["1s"]);
    let relay = RelayProcess::start(&config.to_toml()).await;

    let rcpts = ["now@retry.test", "later@retry.test"];
    let body = message("s@client.test", &rcpts, "retry", &new_message_id(), "x");
    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
    let queue_id = client
        .send_mail("s@client.test", &rcpts, &body)
        .await
        .expect("accepted");

    let later = [("msg_id", queue_id.as_str()), ("rcpt", "later@retry.test")];
    relay.wait_for_event("delivered", &later, WAIT).await;
    let sink = &group.sinks[0];
    // Longer than the retry interval: a wrong extra attempt would show up meanwhile.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let messages = sink.messages();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert_eq!(messages[0].rcpts, vec!["now@retry.test"]);
    assert_eq!(messages[1].rcpts, vec!["later@retry.test"]);
    assert_eq!(
        sink.rcpt_attempts("now@retry.test"),
        1,
        "a delivered recipient is never sent again"
    );
    assert_eq!(sink.rcpt_attempts("later@retry.test"), 2);

    let logs = relay.logs();
    let position = |event: &str| {
        logs.iter()
            .position(|l| relay_tests::is_event(l, event, &later))
            .unwrap_or_else(|| panic!("no {event} line for later@retry.test\n{}", relay.describe()))
    };
    let deferred = position("deferred");
    assert!(
        deferred < position("delivered"),
        "deferred is logged before delivered"
    );
    assert!(
        logs[deferred].get("attempts").is_some(),
        "deferred carries attempts: {}",
        logs[deferred]
    );
    assert!(
        relay_tests::field(&logs[deferred], "reply").is_some_and(|r| r.contains("451")),
        "deferred carries the remote reply: {}",
        logs[deferred]
    );
    assert_eq!(
        relay
            .events(
                "delivered",
                &[("msg_id", &queue_id), ("rcpt", "now@retry.test")]
            )
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_without_mx_is_delivered_to_its_address_record() {
    let net = Net::unique();
    let group = SinkGroup::start(vec![(net.ip(1), Sink::builder())], &[]).await;
    let dns = DnsServer::start(Zone::new().a("amx.test", net.ip(1))).await;
    let relay = RelayProcess::start(&RelayConfig::new(dns.addr(), group.port).to_toml()).await;
    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
    let body = message(
        "s@client.test",
        &["r@amx.test"],
        "implicit mx",
        &new_message_id(),
        "x",
    );
    client
        .send_mail("s@client.test", &["r@amx.test"], &body)
        .await
        .expect("accepted");
    let m = group.sinks[0].wait_for(1, WAIT).await;
    assert_eq!(m[0].rcpts, vec!["r@amx.test"]);
    assert!(
        dns.query_count("amx.test", RecordType::MX) >= 1,
        "MX was asked first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_sends_its_domain_to_the_next_hop_without_any_lookup() {
    let net = Net::unique();
    let group = SinkGroup::start(vec![(net.ip(1), Sink::builder())], &[]).await;
    // The next hop has its own port, unlike the MXes.
    let upstream = Sink::start(net.ip(5)).await;
    let dns = DnsServer::start(
        Zone::new()
            .mx("other.test", 10, "mx.other.test")
            .a("mx.other.test", net.ip(1)),
    )
    .await;
    let config = RelayConfig::new(dns.addr(), group.port)
        .route("upstream.test", &upstream.addr().to_string());
    let relay = RelayProcess::start(&config.to_toml()).await;
    let rcpts = ["x@upstream.test", "y@other.test"];
    let body = message("s@client.test", &rcpts, "route", &new_message_id(), "x");
    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
    client
        .send_mail("s@client.test", &rcpts, &body)
        .await
        .expect("accepted");
    let up = upstream.wait_for(1, WAIT).await;
    let mx = group.sinks[0].wait_for(1, WAIT).await;
    assert_eq!(rcpt_set(&up), set(&["x@upstream.test"]));
    assert_eq!(
        rcpt_set(&mx),
        set(&["y@other.test"]),
        "other domains still go to their MX"
    );
    assert_eq!(
        dns.queries_for("upstream.test"),
        0,
        "a routed domain is not looked up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_all_route_sends_every_domain_to_the_next_hop() {
    let net = Net::unique();
    let upstream = Sink::start(net.ip(5)).await;
    let dns = DnsServer::start(
        Zone::new()
            .mx("foo.test", 10, "mx.foo.test")
            .a("mx.foo.test", net.ip(1)),
    )
    .await;
    let config = RelayConfig::new(dns.addr(), 9).route("*", &upstream.addr().to_string());
    let relay = RelayProcess::start(&config.to_toml()).await;
    let rcpts = ["a@foo.test", "b@bar.test"];
    let body = message("s@client.test", &rcpts, "catch-all", &new_message_id(), "x");
    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
    let queue_id = client
        .send_mail("s@client.test", &rcpts, &body)
        .await
        .expect("accepted");
    relay
        .wait_for_events("delivered", &[("msg_id", &queue_id)], 2, WAIT)
        .await;
    assert_eq!(rcpt_set(&upstream.messages()), set(&rcpts));
    assert_eq!(
        upstream.messages().len(),
        1,
        "domains sharing a next hop travel in one transaction"
    );
    assert_eq!(
        dns.total_queries(),
        0,
        "no lookups at all: {:?}",
        dns.questions()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_address_and_8bit_body_are_delivered_with_smtputf8_and_8bitmime() {
    let net = Net::unique();
    let group = SinkGroup::start(vec![(net.ip(1), Sink::builder())], &[]).await;
    let dns = DnsServer::start(
        Zone::new()
            .mx("utf8.test", 10, "mx.utf8.test")
            .a("mx.utf8.test", net.ip(1)),
    )
    .await;
    let relay = RelayProcess::start(&RelayConfig::new(dns.addr(), group.port).to_toml()).await;
    let from = "ålice@sender.test";
    let to = "用户@utf8.test";
    let body_text = "Grüße aus Köln — 8-bit ✓";
    let body = message(from, &[to], "Überschrift", &new_message_id(), body_text);
    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
    let ehlo = client.ehlo("client.test").await.expect("ehlo");
    assert!(
        ehlo.has_extension("SMTPUTF8") && ehlo.has_extension("8BITMIME"),
        "{ehlo}"
    );
    client
        .send_mail_params(from, "SMTPUTF8 BODY=8BITMIME", &[to], &body)
        .await
        .expect("accepted");
    let m = group.sinks[0].wait_for(1, WAIT).await;
    assert_eq!(m[0].mail_from, from);
    assert_eq!(m[0].rcpts, vec![to]);
    assert!(m[0].has_param("SMTPUTF8"), "params: {:?}", m[0].mail_params);
    assert!(
        m[0].has_param("BODY=8BITMIME"),
        "params: {:?}",
        m[0].mail_params
    );
    assert!(m[0].text().contains(body_text), "8-bit body intact");
    assert_eq!(m[0].header("subject").as_deref(), Some("Überschrift"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_answer_is_cached_within_its_ttl() {
    let (group, dns, relay) =
        single_mx_world_with_ttl("cache.test", 300, Sink::builder(), |c| c).await;
    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
    for i in 1..=2 {
        send_numbered(&mut client, "r@cache.test", i).await;
        group.sinks[0].wait_for(i, WAIT).await;
    }
    assert_eq!(
        dns.query_count("cache.test", RecordType::MX),
        1,
        "{:?}",
        dns.questions()
    );
    assert_eq!(
        dns.query_count("mx.cache.test", RecordType::A),
        1,
        "{:?}",
        dns.questions()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_is_asked_again_after_its_ttl_expired() {
    let (group, dns, relay) =
        single_mx_world_with_ttl("short.test", 1, Sink::builder(), |c| c).await;
    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
    for i in 1..=2 {
        send_numbered(&mut client, "r@short.test", i).await;
        group.sinks[0].wait_for(i, WAIT).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    assert_eq!(
        dns.query_count("short.test", RecordType::MX),
        2,
        "{:?}",
        dns.questions()
    );
}

/// One domain whose MX `mx.<domain>` is a sink built from `sink`, and a relay with `tune`
/// applied to the test defaults.
async fn single_mx_world(
    domain: &str,
    sink: SinkBuilder,
    tune: impl FnOnce(RelayConfig) -> RelayConfig,
) -> (SinkGroup, DnsServer, RelayProcess) {
    single_mx_world_with_ttl(domain, 300, sink, tune).await
}

/// Like [`single_mx_world`], with the DNS records' TTL in seconds.
async fn single_mx_world_with_ttl(
    domain: &str,
    ttl: u32,
    sink: SinkBuilder,
    tune: impl FnOnce(RelayConfig) -> RelayConfig,
) -> (SinkGroup, DnsServer, RelayProcess) {
    let net = Net::unique();
    let group = SinkGroup::start(vec![(net.ip(1), sink)], &[]).await;
    let mx = format!("mx.{domain}");
    let dns = DnsServer::start(Zone::new().ttl(ttl).mx(domain, 10, &mx).a(&mx, net.ip(1))).await;
    let relay =
        RelayProcess::start(&tune(RelayConfig::new(dns.addr(), group.port)).to_toml()).await;
    (group, dns, relay)
}

/// Sends message number `n` from s@client.test to `rcpt` over `client`.
async fn send_numbered(client: &mut SmtpClient, rcpt: &str, n: usize) {
    let body = message(
        "s@client.test",
        &[rcpt],
        &format!("message {n}"),
        &new_message_id(),
        "x",
    );
    client
        .send_mail("s@client.test", &[rcpt], &body)
        .await
        .expect("accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_messages_to_one_mx_reuse_the_open_connection() {
    let (group, _dns, relay) = single_mx_world("reuse.test", Sink::builder(), |c| {
        c.set("delivery", "idle_timeout", "\"30s\"")
    })
    .await;
    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
    for i in 0..3 {
        send_numbered(&mut client, "r@reuse.test", i).await;
        // One after the other: each delivery finishes before the next message exists.
        group.sinks[0].wait_for(i + 1, WAIT).await;
    }
    assert_eq!(group.sinks[0].messages().len(), 3);
    assert_eq!(
        group.sinks[0].connections(),
        1,
        "the second and third message reuse the first connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_one_destination_stay_within_the_configured_limit() {
    let slow = Sink::builder().data_delay(Duration::from_millis(300));
    let (group, _dns, relay) = single_mx_world("capped.test", slow, |c| {
        c.set("delivery", "max_connections_per_destination", "2")
            .set("delivery", "idle_timeout", "\"30s\"")
    })
    .await;
    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
    for i in 0..8 {
        send_numbered(&mut client, "r@capped.test", i).await;
    }
    group.sinks[0].wait_for(8, WAIT).await;
    let opened = group.sinks[0].connections();
    assert!(
        (1..=2).contains(&opened),
        "8 queued messages to one destination opened {opened} connections; the limit is 2"
    );
}
