//! Policy plugins on live traffic: each shipped plugin changes what happens as its config says,
//! hot reload under load, the sandbox's fallbacks, and choose_ip's source address.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_tests::{
    field, message, new_message_id, relay::run_relay, DnsServer, Net, RelayConfig, RelayProcess,
    Sink, SinkGroup, SmtpClient, Zone, WAIT,
};
use relay_tests::{metrics, plugins};

/// A relay routing every domain to `sink`, loading plugins from `dir`, with extra TOML.
async fn relay_with_plugins(sink: &Sink, dns: &DnsServer, dir: &Path, extra: &str) -> RelayProcess {
    relay_with_plugins_tuned(sink, dns, dir, extra, |c| c).await
}

/// Like [`relay_with_plugins`], with `tune` applied to the config.
async fn relay_with_plugins_tuned(
    sink: &Sink,
    dns: &DnsServer,
    dir: &Path,
    extra: &str,
    tune: impl FnOnce(RelayConfig) -> RelayConfig,
) -> RelayProcess {
    let config = tune(RelayConfig::new(dns.addr(), 9))
        .route("*", &sink.addr().to_string())
        .plugins_dir(dir)
        .raw(extra);
    RelayProcess::start(&config.to_toml()).await
}

/// A sink, a DNS server, a plugin directory holding one shipped plugin, and a relay that
/// routes every domain to the sink and has loaded that plugin.
struct PluginWorld {
    sink: Sink,
    _dns: DnsServer,
    dir: tempfile::TempDir,
    relay: RelayProcess,
}

impl PluginWorld {
    /// Installs plugin crate `name` (as `name.wasm`), starts the relay with `extra` TOML and
    /// `tune` applied, and waits until the plugin is loaded.
    async fn start(
        name: &str,
        extra: &str,
        tune: impl FnOnce(RelayConfig) -> RelayConfig,
    ) -> PluginWorld {
        let net = Net::unique();
        let sink = Sink::start(net.ip(1)).await;
        let dns = DnsServer::start(Zone::new()).await;
        let dir = tempfile::tempdir().expect("dir");
        plugins::install(name, dir.path(), name);
        let relay = relay_with_plugins_tuned(&sink, &dns, dir.path(), extra, tune).await;
        relay
            .wait_for_event("plugin_loaded", &[("plugin", name)], WAIT)
            .await;
        PluginWorld {
            sink,
            _dns: dns,
            dir,
            relay,
        }
    }
}

fn body(subject: &str, extra_headers: &str, text: &str) -> Vec<u8> {
    let mut m = message(
        "a@sender.test",
        &["b@rcpt.test"],
        subject,
        &new_message_id(),
        text,
    );
    let mut out = extra_headers.as_bytes().to_vec();
    out.append(&mut m);
    out
}

fn code_of(err: &relay_tests::client::SendError) -> (u16, Option<String>) {
    let reply = err.reply().expect("a reply");
    (reply.code, reply.enhanced())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_policy_rejects_blocked_attachments_and_missing_headers_and_tags_campaigns() {
    let PluginWorld {
        sink,
        relay,
        dir: _dir,
        _dns,
    } = PluginWorld::start(
        "content-policy",
        "[plugins.content-policy]\nadd_header = \"X-Content-Policy: checked\"\n",
        |c| c,
    )
    .await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");

    let exe = b"From: a@sender.test\r\nTo: b@rcpt.test\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
Subject: invoice\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"invoice.pdf.exe\"\r\n\r\nMZ\r\n--b--\r\n";
    let err = c
        .send_mail("a@sender.test", &["b@rcpt.test"], exe)
        .await
        .expect_err("blocked attachment");
    assert_eq!(code_of(&err), (550, Some("5.7.1".into())), "{err:?}");

    let no_date = b"From: a@sender.test\r\nTo: b@rcpt.test\r\nSubject: undated\r\n\r\nx\r\n";
    let err = c
        .send_mail("a@sender.test", &["b@rcpt.test"], no_date)
        .await
        .expect_err("no Date");
    assert_eq!(code_of(&err), (550, Some("5.6.0".into())), "{err:?}");

    let id = c
        .send_mail(
            "a@sender.test",
            &["b@rcpt.test"],
            &body("spring sale", "X-Campaign: spring\r\n", "hello"),
        )
        .await
        .expect("a clean message is accepted");
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "only the clean message was queued");
    let text = String::from_utf8_lossy(&got[0].data).to_string();
    assert!(text.contains("X-Content-Policy: checked\r\n"), "{text}");
    let received = relay
        .wait_for_event("received", &[("msg_id", &id)], WAIT)
        .await;
    assert!(
        field(&received, "tags").is_some_and(|t| t.contains("campaign=spring")),
        "{received}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_tempfails_a_sender_domain_over_its_limit() {
    let PluginWorld {
        sink,
        relay,
        dir: _dir,
        _dns,
    } = PluginWorld::start(
        "rate-limit",
        "[plugins.rate-limit]\nper_sender_domain = \"3/1h\"\n",
        |c| c,
    )
    .await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    for n in 0..3 {
        c.send_mail(
            "a@limited.test",
            &["b@rcpt.test"],
            &body(&format!("m{n}"), "", "x"),
        )
        .await
        .expect("under the limit");
    }
    let err = c
        .send_mail("a@limited.test", &["b@rcpt.test"], &body("m3", "", "x"))
        .await
        .expect_err("over the limit");
    let reply = err.reply().expect("reply");
    assert_eq!(
        (reply.code, reply.enhanced().as_deref()),
        (451, Some("4.7.1")),
        "{reply}"
    );
    assert!(reply.text().contains("limited.test"), "{reply}");
    // Another sender domain has its own budget.
    c.send_mail("a@other.test", &["b@rcpt.test"], &body("other", "", "x"))
        .await
        .expect("another domain");
    assert_eq!(sink.wait_for(4, WAIT).await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppression_refuses_a_recipient_after_it_hard_bounced() {
    let net = Net::unique();
    let refusing = Sink::builder().rcpt_policy(|rcpt, _| {
        (rcpt == "gone@dest.test").then(|| (550, "5.1.1 no such user".to_string()))
    });
    let group = SinkGroup::start(vec![(net.ip(1), refusing)], &[]).await;
    let dns = DnsServer::start(
        Zone::new()
            .mx("dest.test", 10, "mx.dest.test")
            .a("mx.dest.test", net.ip(1)),
    )
    .await;
    let dir = tempfile::tempdir().expect("dir");
    plugins::install("suppression", dir.path(), "suppression");
    let config = RelayConfig::new(dns.addr(), group.port)
        .retry_schedule(&["1h"])
        .plugins_dir(dir.path());
    let relay = RelayProcess::start(&config.to_toml()).await;
    relay
        .wait_for_event("plugin_loaded", &[("plugin", "suppression")], WAIT)
        .await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    let id = c
        .send_mail("", &["gone@dest.test"], &body("first", "", "x"))
        .await
        .expect("accepted the first time");
    let bounced = relay
        .wait_for_event(
            "bounced",
            &[("msg_id", &id), ("class", "invalid-recipient")],
            WAIT,
        )
        .await;
    assert!(
        field(&bounced, "reply").is_some_and(|r| r.contains("5.1.1")),
        "{bounced}"
    );

    c.command("RSET").await.expect("rset");
    c.command("MAIL FROM:<a@sender.test>").await.expect("mail");
    let rcpt = c.command("RCPT TO:<gone@dest.test>").await.expect("rcpt");
    assert_eq!(
        (rcpt.code, rcpt.enhanced().as_deref()),
        (550, Some("5.1.1")),
        "{rcpt}"
    );
    assert!(rcpt.text().contains("suppressed"), "{rcpt}");
    let other = c.command("RCPT TO:<fine@dest.test>").await.expect("rcpt");
    assert_eq!(other.code, 250, "{other}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_pools_choose_ip_makes_the_mx_see_the_chosen_source_address() {
    let net = Net::unique();
    let sink = Sink::start(net.ip(1)).await;
    let dns = DnsServer::start(Zone::new()).await;
    let dir = tempfile::tempdir().expect("dir");
    plugins::install("ip-pools", dir.path(), "ip-pools");
    let (bulk_ip, tx_ip) = (net.ip(20), net.ip(21));
    let extra = format!(
        "[[source]]\nname = \"bulk1\"\nip = \"{bulk_ip}\"\nehlo = \"bulk1.relay.test\"\n\n\
[[source]]\nname = \"tx1\"\nip = \"{tx_ip}\"\nehlo = \"tx1.relay.test\"\n\n\
[[pool]]\nname = \"bulk\"\nmembers = [{{ source = \"bulk1\" }}]\n\n\
[[pool]]\nname = \"transactional\"\nmembers = [{{ source = \"tx1\" }}]\n\n\
[plugins.ip-pools]\ndefault_pool = \"transactional\"\n\
[plugins.ip-pools.sender_domains]\n\"news.test\" = \"bulk\"\n"
    );
    let relay = relay_with_plugins_tuned(&sink, &dns, dir.path(), &extra, |c| {
        c.set("metrics", "listen", metrics::ANY_PORT)
    })
    .await;
    relay
        .wait_for_event("plugin_loaded", &[("plugin", "ip-pools")], WAIT)
        .await;
    let metrics_addr = metrics::metrics_addr(&relay).await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    c.send_mail("promo@news.test", &["b@rcpt.test"], &body("bulk", "", "x"))
        .await
        .expect("accepted");
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(
        got[0].peer.ip(),
        IpAddr::V4(bulk_ip),
        "bulk mail leaves from the bulk pool"
    );
    assert_eq!(
        got[0].helo, "bulk1.relay.test",
        "with that source's EHLO name"
    );

    c.send_mail("receipts@shop.test", &["b@rcpt.test"], &body("tx", "", "x"))
        .await
        .expect("accepted");
    let got = sink.wait_for(2, WAIT).await;
    assert_eq!(
        got[1].peer.ip(),
        IpAddr::V4(tx_ip),
        "other mail uses the default pool"
    );
    assert_eq!(got[1].helo, "tx1.relay.test");

    // Without warm-up caps ip-pools lets its answer be reused for the same sender domain,
    // destination and tags: another sender at news.test leaves from the bulk pool without a
    // third call into the plugin, while a new destination domain asks the plugin again.
    c.send_mail(
        "promo2@news.test",
        &["c@rcpt.test"],
        &body("bulk 2", "", "x"),
    )
    .await
    .expect("accepted");
    let got = sink.wait_for(3, WAIT).await;
    assert_eq!(got[2].peer.ip(), IpAddr::V4(bulk_ip), "the reused answer");
    let calls = "relay_plugin_calls_total{plugin=\"ip-pools\",hook=\"choose_ip\"}";
    let reused = "relay_plugin_reused_verdicts_total{plugin=\"ip-pools\",hook=\"choose_ip\"}";
    metrics::wait_for_values(metrics_addr, &[(calls, 2.0), (reused, 1.0)], WAIT).await;
    c.send_mail(
        "promo@news.test",
        &["d@elsewhere.test"],
        &body("bulk 3", "", "x"),
    )
    .await
    .expect("accepted");
    let got = sink.wait_for(4, WAIT).await;
    assert_eq!(got[3].peer.ip(), IpAddr::V4(bulk_ip));
    metrics::wait_for_values(metrics_addr, &[(calls, 3.0), (reused, 1.0)], WAIT).await;
}

/// The `transaction` handle a plugin reads in `on_rcpt` and `on_data` describes the live
/// transaction: the session, MAIL FROM and its SIZE, the recipients accepted before (once each,
/// as queued) and, in `on_data`, all of them; a new transaction starts with none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_read_the_live_transaction_through_its_handle() {
    let PluginWorld {
        sink,
        relay,
        dir: _dir,
        _dns,
    } = PluginWorld::start("bad-plugin", "", |c| c).await;
    let net = Net::unique();
    let ip = IpAddr::V4(net.ip(7));
    let mut c = SmtpClient::connect_from(ip, relay.addr())
        .await
        .expect("connect");
    c.ehlo("client.test").await.expect("ehlo");
    c.command("MAIL FROM:<a@sender.test> SIZE=500")
        .await
        .expect("mail")
        .assert_is(250, "2.1.0");
    for rcpt in ["x@rcpt.test", "y@rcpt.test", "x@rcpt.test"] {
        c.command(&format!("RCPT TO:<{rcpt}>"))
            .await
            .expect("rcpt")
            .assert_is(250, "2.1.5");
    }
    let reply = c
        .command("RCPT TO:<envelope@rcpt.test>")
        .await
        .expect("rcpt");
    reply.assert_is(550, "5.7.1");
    assert_eq!(
        reply.text(),
        format!(
            "5.7.1 ip={ip} helo=client.test tls=false user=- from=a@sender.test size=500 \
             rcpts=x@rcpt.test,y@rcpt.test so_far=3"
        )
    );
    c.command("RSET")
        .await
        .expect("rset")
        .assert_is(250, "2.0.0");
    c.command("MAIL FROM:<b@sender.test>")
        .await
        .expect("mail")
        .assert_is(250, "2.1.0");
    let reply = c
        .command("RCPT TO:<envelope@rcpt.test>")
        .await
        .expect("rcpt");
    assert_eq!(
        reply.text(),
        format!("5.7.1 ip={ip} helo=client.test tls=false user=- from=b@sender.test size=- rcpts= so_far=0"),
        "a new transaction starts without recipients"
    );
    c.command("RSET").await.expect("rset");
    c.command("MAIL FROM:<envelope@sender.test>")
        .await
        .expect("mail")
        .assert_is(250, "2.1.0");
    for rcpt in ["p@rcpt.test", "q@rcpt.test"] {
        c.command(&format!("RCPT TO:<{rcpt}>"))
            .await
            .expect("rcpt")
            .assert_is(250, "2.1.5");
    }
    assert_eq!(c.command("DATA").await.expect("data").code, 354);
    let reply = c.data_body(&body("envelope", "", "x")).await.expect("data");
    reply.assert_is(550, "5.7.1");
    assert_eq!(
        reply.text(),
        format!(
            "5.7.1 ip={ip} helo=client.test tls=false user=- from=envelope@sender.test size=- \
             rcpts=p@rcpt.test,q@rcpt.test"
        )
    );
    // The next transaction, after a new EHLO, sees its own envelope and nothing of the last.
    c.ehlo("other.test").await.expect("ehlo");
    c.command("MAIL FROM:<c@sender.test> SIZE=99")
        .await
        .expect("mail")
        .assert_is(250, "2.1.0");
    c.command("RCPT TO:<p@rcpt.test>")
        .await
        .expect("rcpt")
        .assert_is(250, "2.1.5");
    let reply = c
        .command("RCPT TO:<envelope@rcpt.test>")
        .await
        .expect("rcpt");
    assert_eq!(
        reply.text(),
        format!(
            "5.7.1 ip={ip} helo=other.test tls=false user=- from=c@sender.test size=99 \
             rcpts=p@rcpt.test so_far=1"
        )
    );
    c.command("RSET").await.expect("rset");
    // An ordinary message still goes through.
    c.send_mail("a@sender.test", &["z@rcpt.test"], &body("after", "", "x"))
        .await
        .expect("send");
    assert_eq!(sink.wait_for(1, WAIT).await[0].rcpts, vec!["z@rcpt.test"]);
}

/// Sessions that reach a hook at the same moment are asked in batches (the relay's
/// `policy::batch`); each must still get the verdict of its own transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_each_get_the_verdict_of_their_own_transaction() {
    const SESSIONS: usize = 40;
    let PluginWorld {
        sink,
        relay,
        dir: _dir,
        _dns,
    } = PluginWorld::start("bad-plugin", "", |c| {
        c.set("metrics", "listen", metrics::ANY_PORT)
    })
    .await;
    let metrics_at = metrics::metrics_addr(&relay).await;
    let net = Net::unique();
    let start = Arc::new(tokio::sync::Barrier::new(SESSIONS));
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let (start, addr) = (Arc::clone(&start), relay.addr());
            let ip = IpAddr::V4(net.ip(10 + i as u8));
            tokio::spawn(async move {
                let mut c = SmtpClient::connect_from(ip, addr).await.expect("connect");
                c.ehlo(&format!("client{i}.test")).await.expect("ehlo");
                start.wait().await;
                // on_rcpt: the plugin answers with the transaction it was given.
                c.command(&format!("MAIL FROM:<s{i}@sender.test>"))
                    .await
                    .expect("mail")
                    .assert_is(250, "2.1.0");
                c.command(&format!("RCPT TO:<ok{i}@rcpt.test>"))
                    .await
                    .expect("rcpt")
                    .assert_is(250, "2.1.5");
                let rcpt = c
                    .command("RCPT TO:<envelope@rcpt.test>")
                    .await
                    .expect("rcpt");
                c.command("RSET").await.expect("rset");
                // on_data: the same, for the message's transaction.
                c.command(&format!("MAIL FROM:<envelope@s{i}.sender.test>"))
                    .await
                    .expect("mail")
                    .assert_is(250, "2.1.0");
                c.command(&format!("RCPT TO:<to{i}@rcpt.test>"))
                    .await
                    .expect("rcpt")
                    .assert_is(250, "2.1.5");
                assert_eq!(c.command("DATA").await.expect("data").code, 354);
                let data = c
                    .data_body(&body(&format!("s{i}"), "", "x"))
                    .await
                    .expect("data");
                // And a message that goes through, with its own recipient.
                c.command("RSET").await.expect("rset");
                let last = format!("last{i}@rcpt.test");
                c.send_mail(
                    &format!("s{i}@sender.test"),
                    &[last.as_str()],
                    &body("last", "", "x"),
                )
                .await
                .expect("send");
                let _ = c.quit().await;
                (i, ip, rcpt, data)
            })
        })
        .collect();
    for session in sessions {
        let (i, ip, rcpt, data) = session.await.expect("session");
        rcpt.assert_is(550, "5.7.1");
        assert_eq!(
            rcpt.text(),
            format!(
                "5.7.1 ip={ip} helo=client{i}.test tls=false user=- from=s{i}@sender.test \
                 size=- rcpts=ok{i}@rcpt.test so_far=1"
            )
        );
        data.assert_is(550, "5.7.1");
        assert_eq!(
            data.text(),
            format!(
                "5.7.1 ip={ip} helo=client{i}.test tls=false user=- \
                 from=envelope@s{i}.sender.test size=- rcpts=to{i}@rcpt.test"
            )
        );
    }
    let delivered = sink.wait_for(SESSIONS, WAIT).await;
    let mut rcpts: Vec<String> = delivered.iter().flat_map(|t| t.rcpts.clone()).collect();
    rcpts.sort();
    let mut expected: Vec<String> = (0..SESSIONS)
        .map(|i| format!("last{i}@rcpt.test"))
        .collect();
    expected.sort();
    assert_eq!(rcpts, expected);
    // Every question was asked in some batch, once: four recipients and two messages a session.
    let scrape = metrics::scrape(metrics_at).await;
    let questions = |hook: &str| {
        scrape.value(&format!(
            "relay_plugin_batch_questions_total{{hook=\"{hook}\"}}"
        ))
    };
    let batches =
        |hook: &str| scrape.value(&format!("relay_plugin_batches_total{{hook=\"{hook}\"}}"));
    assert_eq!(questions("on_rcpt"), (4 * SESSIONS) as f64);
    assert_eq!(questions("on_data"), (2 * SESSIONS) as f64);
    for hook in ["on_rcpt", "on_data"] {
        assert!(
            batches(hook) >= 1.0 && batches(hook) <= questions(hook),
            "{hook}: {} batches for {} questions",
            batches(hook),
            questions(hook)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_plugin_gets_the_fallback_while_mail_keeps_flowing() {
    // A small cap, so the memory bomb meets it well within the time budget.
    let PluginWorld {
        sink,
        relay,
        dir: _dir,
        _dns,
    } = PluginWorld::start("bad-plugin", "", |c| {
        c.set("plugins", "memory_limit", "4194304")
            .set("plugins", "time_budget", "\"250ms\"")
    })
    .await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    c.ehlo("client.test").await.expect("ehlo");
    c.command("MAIL FROM:<a@sender.test>").await.expect("mail");
    for (rcpt, kind) in [
        ("loop@rcpt.test", "timeout"),
        ("oom@rcpt.test", "memory"),
        ("trap@rcpt.test", "trap"),
    ] {
        let started = Instant::now();
        let reply = c.command(&format!("RCPT TO:<{rcpt}>")).await.expect("rcpt");
        // Fail-open fallback for on_rcpt: accepted, and quickly.
        assert_eq!(reply.code, 250, "{rcpt}: {reply}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{rcpt} took {:?}",
            started.elapsed()
        );
        relay
            .wait_for_event(
                "plugin_fault",
                &[("plugin", "bad-plugin"), ("kind", kind)],
                WAIT,
            )
            .await;
    }
    let ok = c.command("RCPT TO:<fine@rcpt.test>").await.expect("rcpt");
    assert_eq!(ok.code, 250);
    let go = c.command("DATA").await.expect("data");
    assert_eq!(go.code, 354, "{go}");
    let reply = c
        .data_body(&body("after faults", "", "x"))
        .await
        .expect("data");
    assert_eq!(reply.code, 250, "{reply}");
    assert_eq!(sink.wait_for(1, WAIT).await[0].rcpts.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_that_keeps_faulting_is_quarantined_until_its_file_is_replaced() {
    let PluginWorld {
        sink: _sink,
        relay,
        dir,
        _dns,
    } = PluginWorld::start("bad-plugin", "", |c| c).await;
    // The test config allows the default 5 faults per minute.
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    c.ehlo("client.test").await.expect("ehlo");
    c.command("MAIL FROM:<a@sender.test>").await.expect("mail");
    for _ in 0..6 {
        c.command("RCPT TO:<trap@rcpt.test>").await.expect("rcpt");
    }
    relay
        .wait_for_event("plugin_quarantined", &[("plugin", "bad-plugin")], WAIT)
        .await;
    let faults = relay
        .events("plugin_fault", &[("plugin", "bad-plugin")])
        .len();
    c.command("RCPT TO:<trap@rcpt.test>").await.expect("rcpt");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        relay
            .events("plugin_fault", &[("plugin", "bad-plugin")])
            .len(),
        faults,
        "a quarantined plugin is not called"
    );
    // A new file under the same name brings it back (here: different code).
    let mark = relay.log_mark();
    plugins::install("hello-plugin", dir.path(), "bad-plugin");
    relay
        .wait_for_log_since(
            mark,
            |l| relay_tests::is_event(l, "plugin_loaded", &[("plugin", "bad-plugin")]),
            WAIT,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_dropped_in_under_load_takes_effect_within_a_second_without_failed_sessions() {
    let net = Net::unique();
    let sink = Sink::start(net.ip(1)).await;
    let dns = DnsServer::start(Zone::new()).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir_all(dir.path()).expect("dir");
    let relay = relay_with_plugins(
        &sink,
        &dns,
        dir.path(),
        "[plugins.content-policy]\nadd_header = \"X-Content-Policy: checked\"\n",
    )
    .await;
    let addr = relay.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let mut c = match SmtpClient::connect(addr).await {
                    Ok(c) => c,
                    Err(e) => {
                        failures.push(format!("connect: {e}"));
                        continue;
                    }
                };
                for n in 0..5 {
                    let m = body(&format!("load {worker}-{n}"), "X-Campaign: load\r\n", "x");
                    match c.send_mail("a@sender.test", &["b@rcpt.test"], &m).await {
                        Ok(_) => {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(format!("{e:?}")),
                    }
                }
                let _ = c.quit().await;
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sent.load(Ordering::Relaxed);
    let mark = relay.log_mark();
    let dropped = Instant::now();
    plugins::install("content-policy", dir.path(), "content-policy");
    // The first transaction that used the new plugin: its on_data tagged the message.
    relay
        .wait_for_log_since(
            mark,
            |l| {
                relay_tests::is_event(l, "received", &[])
                    && field(l, "tags").is_some_and(|t| t.contains("campaign=load"))
            },
            WAIT,
        )
        .await;
    let took = dropped.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for task in load {
        failures.extend(task.await.expect("load task"));
    }
    assert!(
        failures.is_empty(),
        "sessions failed during the reload: {failures:?}"
    );
    assert!(
        before > 0 && sent.load(Ordering::Relaxed) > before,
        "load kept flowing"
    );
    let loaded = relay.events("plugin_loaded", &[("plugin", "content-policy")]);
    eprintln!(
        "drop-to-first-transaction-with-plugin: {took:?}; compile_ms {:?}; cache_hit {:?}",
        loaded.first().and_then(|l| l.get("compile_ms").cloned()),
        loaded.first().and_then(|l| l.get("cache_hit").cloned())
    );
    assert!(
        took < Duration::from_secs(1),
        "took {took:?} from drop to the first transaction using it"
    );
    // And what it changed reaches the MX.
    let deadline = Instant::now() + WAIT;
    while !sink
        .messages()
        .iter()
        .any(|t| String::from_utf8_lossy(&t.data).contains("X-Content-Policy: checked"))
    {
        assert!(
            Instant::now() < deadline,
            "no delivered message carries the plugin's header"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_replacement_is_refused_and_the_previous_version_stays_active() {
    let PluginWorld {
        sink,
        relay,
        dir,
        _dns,
    } = PluginWorld::start(
        "content-policy",
        "[plugins.content-policy]\nadd_header = \"X-Content-Policy: checked\"\n",
        |c| c,
    )
    .await;
    let mark = relay.log_mark();
    std::fs::write(dir.path().join(".t"), b"this is not wasm").expect("write");
    std::fs::rename(
        dir.path().join(".t"),
        dir.path().join("content-policy.wasm"),
    )
    .expect("rename");
    let refused = relay
        .wait_for_log_since(
            mark,
            |l| relay_tests::is_event(l, "plugin_refused", &[]),
            WAIT,
        )
        .await;
    let text = refused.to_string();
    assert!(
        text.contains("content-policy.wasm"),
        "names the file: {text}"
    );
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    c.send_mail(
        "a@sender.test",
        &["b@rcpt.test"],
        &body("still checked", "", "x"),
    )
    .await
    .expect("accepted");
    let got = sink.wait_for(1, WAIT).await;
    assert!(
        String::from_utf8_lossy(&got[0].data).contains("X-Content-Policy: checked"),
        "the previous version still runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_check_reports_hooks_and_refuses_a_file_that_is_not_a_plugin() {
    let out = run_relay(
        &[
            "plugin",
            "check",
            &plugins::wasm("content-policy").display().to_string(),
        ],
        WAIT,
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains("content-policy") && out.stdout.contains("on_data"),
        "{out:?}"
    );

    let dir = tempfile::tempdir().expect("dir");
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0").expect("write");
    let out = run_relay(&["plugin", "check", &junk.display().to_string()], WAIT).await;
    assert!(!out.status.success());
    assert!(out.stderr.contains("junk.wasm"), "names the file: {out:?}");
}
