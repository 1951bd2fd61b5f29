//! The Prometheus endpoint on a live relay: counters move by exactly what the traffic did,
//! and plugin faults, calls and quarantine show up from the plugin set.

use std::time::Duration;

use relay_tests::metrics::{self, metrics_addr, wait_for_values, ANY_PORT};
use relay_tests::{
    message, new_message_id, plugins, DnsServer, Net, RelayConfig, RelayProcess, Sink, SmtpClient,
    Zone, WAIT,
};

fn body(to: &str, subject: &str) -> Vec<u8> {
    message("a@sender.test", &[to], subject, &new_message_id(), "x")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_received_delivered_bounced_and_dsn_messages() {
    let net = Net::unique();
    let sink = Sink::builder()
        .rcpt_policy(|rcpt, _| {
            (rcpt == "nobody@dest.test").then(|| (550, "5.1.1 no such user".to_string()))
        })
        .start(net.ip(1))
        .await;
    let dns = DnsServer::start(Zone::new()).await;
    // A long retry interval: nothing is retried while the test looks.
    let relay = RelayProcess::routed_to(&sink, &dns, |c| {
        c.retry_schedule(&["1h"]).set("metrics", "listen", ANY_PORT)
    })
    .await;
    let addr = metrics_addr(&relay).await;

    let before = metrics::scrape(addr).await;
    for (series, value) in [
        ("relay_messages_received_total", 0.0),
        ("relay_deliveries_total{result=\"delivered\"}", 0.0),
        ("relay_deliveries_total{result=\"deferred\"}", 0.0),
        ("relay_deliveries_total{result=\"bounced\"}", 0.0),
        ("relay_dsn_queued_total", 0.0),
        ("relay_queue_messages", 0.0),
        ("relay_smtp_connections", 0.0),
        ("relay_plugins_loaded", 0.0),
        ("relay_spool_writes_total", 0.0),
        ("relay_spool_syncs_total", 0.0),
        ("relay_spool_memory_bytes{kind=\"table_readers\"}", 0.0),
    ] {
        assert_eq!(before.value(series), value, "{series}\n{}", before.text);
    }
    assert!(before.text.ends_with("# EOF\n"), "{}", before.text);

    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    wait_for_values(addr, &[("relay_smtp_connections", 1.0)], WAIT).await;
    c.send_mail(
        "a@sender.test",
        &["ok@dest.test"],
        &body("ok@dest.test", "ok"),
    )
    .await
    .expect("accepted");
    // Accepted by the relay, refused with a 5xx by the MX: a bounce and a DSN to the sender,
    // which the route also sends to the sink.
    c.send_mail(
        "a@sender.test",
        &["nobody@dest.test"],
        &body("nobody@dest.test", "bounces"),
    )
    .await
    .expect("accepted");
    c.quit().await.expect("quit");
    sink.wait_for(2, WAIT).await;

    let after = wait_for_values(
        addr,
        &[
            ("relay_messages_received_total", 2.0),
            ("relay_deliveries_total{result=\"delivered\"}", 2.0),
            ("relay_deliveries_total{result=\"bounced\"}", 1.0),
            ("relay_deliveries_total{result=\"deferred\"}", 0.0),
            ("relay_deliveries_total{result=\"suppressed\"}", 0.0),
            ("relay_dsn_queued_total", 1.0),
            ("relay_queue_messages", 0.0),
            ("relay_smtp_connections", 0.0),
            (
                "relay_messages_refused_total{stage=\"rcpt\",reason=\"policy\"}",
                0.0,
            ),
            // Two messages queued, then three outcomes (delivered; bounced, with the DSN
            // queued in the same write; the DSN delivered).
            ("relay_spool_writes_total", 5.0),
        ],
        WAIT,
    )
    .await;
    // Each accepted message was synced before its 250 (one client, one at a time: no
    // sharing). The outcomes are synced with the next message or within 100 ms, so the last
    // ones got a sync of their own.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let syncs = metrics::scrape(addr).await.value("relay_spool_syncs_total");
    assert!((3.0..=5.0).contains(&syncs), "{syncs} syncs for 5 writes");
    // The messages went through the memtables.
    assert!(
        after.value("relay_spool_memory_bytes{kind=\"memtables\"}") > 0.0,
        "{}",
        after.text
    );
    let delivered: Vec<_> = sink.messages().iter().map(|t| t.rcpts.clone()).collect();
    assert!(
        delivered.contains(&vec!["a@sender.test".to_string()]),
        "the DSN reached the sender: {delivered:?}"
    );
    assert!(
        after.starting_with("relay_plugin_faults_total").is_empty(),
        "no plugins, no plugin series:\n{}",
        after.text
    );

    let other = metrics::http_get(addr, "/").await;
    assert_eq!(other.status, 404, "{other:?}");
    let post =
        metrics::http_raw(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert_eq!(post.status, 405, "{post:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_faults_calls_and_quarantine_show_in_the_metrics() {
    let net = Net::unique();
    let sink = Sink::start(net.ip(1)).await;
    let dns = DnsServer::start(Zone::new()).await;
    let dir = tempfile::tempdir().expect("dir");
    plugins::install("bad-plugin", dir.path(), "bad-plugin");
    let config = RelayConfig::new(dns.addr(), 9)
        .route("*", &sink.addr().to_string())
        .set("metrics", "listen", ANY_PORT)
        .plugins_dir(dir.path())
        // The second fault quarantines the plugin.
        .set("plugins", "max_faults", "2");
    let relay = RelayProcess::start(&config.to_toml()).await;
    relay
        .wait_for_event("plugin_loaded", &[("plugin", "bad-plugin")], WAIT)
        .await;
    let addr = metrics_addr(&relay).await;

    let faults =
        |kind: &str| format!("relay_plugin_faults_total{{plugin=\"bad-plugin\",kind=\"{kind}\"}}");
    let on_rcpt_calls = "relay_plugin_calls_total{plugin=\"bad-plugin\",hook=\"on_rcpt\"}";
    let quarantined = "relay_plugin_quarantined{plugin=\"bad-plugin\"}";
    let refused_rcpt = "relay_messages_refused_total{stage=\"rcpt\",reason=\"policy\"}";

    let before = wait_for_values(
        addr,
        &[
            ("relay_plugins_loaded", 1.0),
            (&faults("trap"), 0.0),
            (on_rcpt_calls, 0.0),
            (quarantined, 0.0),
        ],
        WAIT,
    )
    .await;
    let info = before.starting_with("relay_plugin_info{plugin=\"bad-plugin\",version=\"");
    assert_eq!(info.len(), 1, "{}", before.text);
    assert_eq!(info[0].1, 1.0);

    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    c.ehlo("client.test").await.expect("ehlo");
    c.command("MAIL FROM:<a@sender.test>").await.expect("mail");
    let refused = c.command("RCPT TO:<reject@rcpt.test>").await.expect("rcpt");
    assert_eq!(refused.code, 550, "{refused}");
    let trapped = c.command("RCPT TO:<trap@rcpt.test>").await.expect("rcpt");
    assert_eq!(trapped.code, 250, "the fail-open fallback: {trapped}");
    let after_two = wait_for_values(
        addr,
        &[
            (&faults("trap"), 1.0),
            (&faults("timeout"), 0.0),
            (&faults("memory"), 0.0),
            (on_rcpt_calls, 2.0),
            (quarantined, 0.0),
            (refused_rcpt, 1.0),
        ],
        WAIT,
    )
    .await;
    // The two calls took some time, and far less than the 10 ms budget each.
    let seconds =
        after_two.value("relay_plugin_call_seconds_total{plugin=\"bad-plugin\",hook=\"on_rcpt\"}");
    assert!(seconds > 0.0 && seconds < 1.0, "{}", after_two.text);

    let trapped = c.command("RCPT TO:<trap@rcpt.test>").await.expect("rcpt");
    assert_eq!(trapped.code, 250, "{trapped}");
    relay
        .wait_for_event("plugin_quarantined", &[("plugin", "bad-plugin")], WAIT)
        .await;
    // A quarantined plugin is skipped: this call is not counted.
    let skipped = c.command("RCPT TO:<trap@rcpt.test>").await.expect("rcpt");
    assert_eq!(skipped.code, 250, "{skipped}");
    wait_for_values(
        addr,
        &[
            (&faults("trap"), 2.0),
            (on_rcpt_calls, 3.0),
            (quarantined, 1.0),
            ("relay_plugins_loaded", 1.0),
        ],
        WAIT,
    )
    .await;
}
