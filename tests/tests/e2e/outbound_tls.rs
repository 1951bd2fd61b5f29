//! Outbound TLS: STARTTLS to the MX under each policy (`none`, `opportunistic`, `required`,
//! `verify`), certificates from a CA made for the test, and what the relay logs and defers.

use relay_tests::config::{toml_array, toml_str};
use relay_tests::tls::{TestCa, TlsFiles};
use relay_tests::{
    check_config, field, message, new_message_id, run_relay, DnsServer, Net, RelayConfig,
    RelayProcess, Sink, SinkBuilder, SinkGroup, SmtpClient, Zone, WAIT,
};
use serde_json::Value;

/// One sink as the MX `mx_name` (at 127.x.y.1) of every domain in `domains`.
async fn mx(
    net: &Net,
    mx_name: &str,
    domains: &[&str],
    sink: SinkBuilder,
) -> (SinkGroup, DnsServer) {
    let group = SinkGroup::start(vec![(net.ip(1), sink)], &[]).await;
    let mut zone = Zone::new().a(mx_name, net.ip(1));
    for domain in domains {
        zone = zone.mx(domain, 10, mx_name);
    }
    (group, DnsServer::start(zone).await)
}

/// Submits one message to `rcpts`; returns its queue id.
async fn send(relay: &RelayProcess, rcpts: &[&str]) -> String {
    let body = message(
        "sender@client.test",
        rcpts,
        "outbound tls",
        &new_message_id(),
        "over TLS or not",
    );
    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
    client
        .send_mail("sender@client.test", rcpts, &body)
        .await
        .expect("accepted")
}

/// `[[tls_policy]]` for `domain`.
fn tls_policy(domain: &str, policy: &str) -> String {
    format!(
        "[[tls_policy]]\ndomain = {}\npolicy = {}\n",
        toml_str(domain),
        toml_str(policy)
    )
}

/// `[delivery] tls_ca_files = [the test CA]`.
fn trusting(config: RelayConfig, files: &TlsFiles) -> RelayConfig {
    config.set(
        "delivery",
        "tls_ca_files",
        &toml_array(&[&files.ca.display().to_string()]),
    )
}

fn text(line: &Value, name: &str) -> String {
    field(line, name).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_delivers_over_starttls_and_logs_the_version_and_cipher() {
    let net = Net::unique();
    let ca = TestCa::new();
    let sink = Sink::builder().starttls(ca.server_config(&["mx.tls.test"]));
    let (group, dns) = mx(&net, "mx.tls.test", &["tls.test"], sink).await;
    let relay = RelayProcess::start(&RelayConfig::new(dns.addr(), group.port).to_toml()).await;

    let queue_id = send(&relay, &["r@tls.test"]).await;
    let delivered = relay
        .wait_for_event("delivered", &[("msg_id", &queue_id)], WAIT)
        .await;
    assert_eq!(text(&delivered, "tls"), "TLSv1.3", "{delivered}");
    assert!(
        text(&delivered, "cipher").starts_with("TLS13_"),
        "{delivered}"
    );
    assert_eq!(text(&delivered, "tls_verified"), "false", "{delivered}");

    let sink = &group.sinks[0];
    let m = sink.wait_for(1, WAIT).await;
    let session = m[0].tls.clone().expect("the message came over TLS");
    assert_eq!(session.version, "TLSv1.3");
    assert_eq!(session.cipher, text(&delivered, "cipher"));
    assert_eq!(
        session.sni.as_deref(),
        Some("mx.tls.test"),
        "SNI names the MX"
    );
    assert_eq!(m[0].helo, "relay.test", "EHLO again after STARTTLS");
    let commands = sink.commands();
    assert_eq!(
        commands[..3],
        ["EHLO relay.test", "STARTTLS", "EHLO relay.test"],
        "{commands:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_policy_delivers_when_the_certificate_chains_to_a_configured_ca() {
    let net = Net::unique();
    let ca = TestCa::new();
    let files = ca.write_files(&["mx.bank.test"]);
    let sink = Sink::builder().starttls(ca.server_config(&["mx.bank.test"]));
    let (group, dns) = mx(&net, "mx.bank.test", &["bank.test"], sink).await;
    let config = trusting(RelayConfig::new(dns.addr(), group.port), &files)
        .raw(&tls_policy("bank.test", "verify"));
    let relay = RelayProcess::start(&config.to_toml()).await;

    let queue_id = send(&relay, &["r@bank.test"]).await;
    let delivered = relay
        .wait_for_event("delivered", &[("msg_id", &queue_id)], WAIT)
        .await;
    assert_eq!(text(&delivered, "tls_verified"), "true", "{delivered}");
    assert_eq!(text(&delivered, "tls"), "TLSv1.3");
    assert!(group.sinks[0].wait_for(1, WAIT).await[0].over_tls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_defers_verify_but_not_opportunistic() {
    let net = Net::unique();
    let ca = TestCa::new();
    let files = ca.write_files(&["unused.test"]);
    // The MX is mx.shared.test, its certificate names someone else.
    let sink = Sink::builder().starttls(ca.server_config(&["someone-else.test"]));
    let (group, dns) = mx(&net, "mx.shared.test", &["strict.test", "easy.test"], sink).await;
    let config = trusting(RelayConfig::new(dns.addr(), group.port), &files)
        .retry_schedule(&["1s"])
        .raw(&tls_policy("strict.test", "verify"));
    let relay = RelayProcess::start(&config.to_toml()).await;

    let queue_id = send(&relay, &["a@strict.test", "b@easy.test"]).await;
    let delivered = relay
        .wait_for_event(
            "delivered",
            &[("msg_id", &queue_id), ("rcpt", "b@easy.test")],
            WAIT,
        )
        .await;
    assert_eq!(text(&delivered, "tls"), "TLSv1.3", "{delivered}");
    assert_eq!(text(&delivered, "tls_verified"), "false");

    // Deferred twice: still queued, retried, never sent.
    let deferrals = relay
        .wait_for_events(
            "deferred",
            &[("msg_id", &queue_id), ("rcpt", "a@strict.test")],
            2,
            WAIT,
        )
        .await;
    let reply = text(&deferrals[0], "reply");
    assert!(
        reply.starts_with("451 4.7.5 TLS certificate verification failed for mx.shared.test"),
        "{reply}"
    );
    assert!(
        reply.contains("someone-else.test"),
        "says which names the certificate has: {reply}"
    );
    let failed = relay
        .wait_for_event("tls_failed", &[("msg_id", &queue_id)], WAIT)
        .await;
    assert_eq!(text(&failed, "tls_policy"), "verify");

    let messages = group.sinks[0].messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!(messages[0].rcpts, vec!["b@easy.test"]);
    assert!(messages[0].over_tls());
    assert!(relay.events("bounced", &[("msg_id", &queue_id)]).is_empty());
    assert!(group.sinks[0].tls_failures() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_policy_defers_when_starttls_is_not_offered() {
    let net = Net::unique();
    let (group, dns) = mx(&net, "mx.plain.test", &["mail.plain.test"], Sink::builder()).await;
    // The wildcard form: every subdomain of plain.test.
    let config = RelayConfig::new(dns.addr(), group.port)
        .retry_schedule(&["1h"])
        .raw(&tls_policy("*.plain.test", "required"));
    let relay = RelayProcess::start(&config.to_toml()).await;

    let queue_id = send(&relay, &["r@mail.plain.test"]).await;
    let deferred = relay
        .wait_for_event("deferred", &[("msg_id", &queue_id)], WAIT)
        .await;
    let reply = text(&deferred, "reply");
    assert!(
        reply.starts_with("451 4.7.5 TLS required by policy but mx.plain.test [")
            && reply.ends_with("] offered no STARTTLS"),
        "{reply}"
    );
    let sink = &group.sinks[0];
    assert!(sink.connections() >= 1);
    assert!(
        !sink.commands().iter().any(|c| c.starts_with("MAIL")),
        "no transaction without TLS: {:?}",
        sink.commands()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_policy_delivers_in_plain_text_although_starttls_is_offered() {
    let net = Net::unique();
    let ca = TestCa::new();
    let sink = Sink::builder().starttls(ca.server_config(&["mx.old.test"]));
    let (group, dns) = mx(&net, "mx.old.test", &["old.test"], sink).await;
    let config = RelayConfig::new(dns.addr(), group.port).set("delivery", "tls", &toml_str("none"));
    let relay = RelayProcess::start(&config.to_toml()).await;

    let queue_id = send(&relay, &["r@old.test"]).await;
    let delivered = relay
        .wait_for_event("delivered", &[("msg_id", &queue_id)], WAIT)
        .await;
    assert_eq!(text(&delivered, "tls"), "none", "{delivered}");
    let sink = &group.sinks[0];
    assert!(!sink.wait_for(1, WAIT).await[0].over_tls());
    assert!(!sink.commands().iter().any(|c| c == "STARTTLS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handshake_falls_back_to_plain_text_only_where_the_policy_allows() {
    let net = Net::unique();
    let sink = Sink::builder().broken_starttls();
    let (group, dns) = mx(&net, "mx.broken.test", &["easy.test", "strict.test"], sink).await;
    let config = RelayConfig::new(dns.addr(), group.port)
        .retry_schedule(&["1h"])
        .raw(&tls_policy("strict.test", "required"));
    let relay = RelayProcess::start(&config.to_toml()).await;

    let queue_id = send(&relay, &["a@easy.test", "b@strict.test"]).await;
    let delivered = relay
        .wait_for_event(
            "delivered",
            &[("msg_id", &queue_id), ("rcpt", "a@easy.test")],
            WAIT,
        )
        .await;
    assert_eq!(text(&delivered, "tls"), "none");
    let fallback = relay
        .wait_for_event("tls_fallback", &[("msg_id", &queue_id)], WAIT)
        .await;
    assert!(
        text(&fallback, "error").starts_with("TLS handshake with mx.broken.test"),
        "{fallback}"
    );
    let deferred = relay
        .wait_for_event(
            "deferred",
            &[("msg_id", &queue_id), ("rcpt", "b@strict.test")],
            WAIT,
        )
        .await;
    assert!(
        text(&deferred, "reply").starts_with("451 4.7.5 TLS handshake with mx.broken.test"),
        "{deferred}"
    );

    let sink = &group.sinks[0];
    let messages = sink.messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!(messages[0].rcpts, vec!["a@easy.test"]);
    assert!(!messages[0].over_tls());
    assert!(sink.tls_failures() >= 2, "both domains tried TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_ca_file_stops_the_relay_at_startup_naming_file_and_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-ca.pem");
    let text = RelayConfig::new(std::net::SocketAddr::from(([127, 0, 0, 1], 53)), 25)
        .set(
            "delivery",
            "tls_ca_files",
            &toml_array(&[&missing.display().to_string()]),
        )
        .to_toml();
    let checked = check_config(&text).await;
    let out = &checked.output;
    assert!(!out.status.success(), "{out:?}");
    let line = relay_tests::config::line_of(&text, "tls_ca_files").expect("line");
    let expected = format!(
        "{}:{line}: [delivery] tls_ca_files: \"{}\": cannot read:",
        checked.path.display(),
        missing.display()
    );
    assert!(out.stderr.contains(&expected), "{expected}\n{}", out.stderr);

    let path = checked.path.display().to_string();
    let served = run_relay(&["serve", "--config", &path], WAIT).await;
    assert_eq!(served.status.code(), Some(2), "{served:?}");
    assert!(served.stderr.contains(&expected), "{}", served.stderr);
}
