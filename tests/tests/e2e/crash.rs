//! SIGKILL right after the relay answered 250 for a batch: on restart every accepted message arrives,
//! and duplicates are bounded by the deliveries that were in flight at the kill.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relay_tests::{
    message, new_message_id, DnsServer, Net, RelayConfig, RelayProcess, Sink, SinkBuilder,
    SinkGroup, SmtpClient, Zone,
};

const SESSIONS: usize = 10;
const PER_SESSION: usize = 20;

/// Sends SESSIONS x PER_SESSION messages over concurrent sessions; returns the
/// Message-IDs that got a 250.
async fn send_batch(relay: SocketAddr) -> BTreeSet<String> {
    let mut sessions = tokio::task::JoinSet::new();
    for s in 0..SESSIONS {
        sessions.spawn(async move {
            let mut accepted = Vec::new();
            let mut client = SmtpClient::connect(relay).await.expect("connect");
            for i in 0..PER_SESSION {
                let id = new_message_id();
                let body = message(
                    "s@client.test",
                    &["r@crash.test"],
                    &format!("crash {s}/{i}"),
                    &id,
                    "x",
                );
                if client
                    .send_mail("s@client.test", &["r@crash.test"], &body)
                    .await
                    .is_ok()
                {
                    accepted.push(id);
                }
            }
            accepted
        });
    }
    let mut accepted = BTreeSet::new();
    while let Some(r) = tokio::time::timeout(Duration::from_secs(60), sessions.join_next())
        .await
        .expect("batch sent in time")
    {
        accepted.extend(r.expect("session task"));
    }
    accepted
}

/// Message-ID (without brackets) -> how many copies, and the time of the first copy.
fn arrivals(sink: &Sink) -> BTreeMap<String, (usize, Instant)> {
    let mut seen: BTreeMap<String, (usize, Instant)> = BTreeMap::new();
    for m in sink.messages() {
        let id = m.header("message-id").unwrap_or_default();
        let id = id.trim_matches(['<', '>']).to_string();
        let entry = seen.entry(id).or_insert((0, m.at));
        entry.0 += 1;
        entry.1 = entry.1.min(m.at);
    }
    seen
}

struct Outcome {
    accepted: usize,
    started_before_restart: usize,
    duplicated_ids: usize,
    extra_copies: usize,
}

async fn kill_after_batch_and_restart(sink: SinkBuilder, release_after_kill: bool) -> Outcome {
    let net = Net::unique();
    let group = SinkGroup::start(vec![(net.ip(1), sink)], &[]).await;
    let sink = &group.sinks[0];
    let dns = DnsServer::start(
        Zone::new()
            .mx("crash.test", 10, "mx.crash.test")
            .a("mx.crash.test", net.ip(1)),
    )
    .await;
    let mut relay = RelayProcess::start(&RelayConfig::new(dns.addr(), group.port).to_toml()).await;

    let accepted = send_batch(relay.addr()).await;
    relay.kill();
    assert_eq!(
        accepted.len(),
        SESSIONS * PER_SESSION,
        "every message of the batch gets a 250"
    );
    // Whatever the dead relay had sent is in the sink's socket buffers; let it be read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started_before_restart = sink.transactions_started();
    let restart_at = Instant::now();
    relay.restart().await;
    if release_after_kill {
        sink.release();
    }

    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let seen = arrivals(sink);
        let missing: Vec<&String> = accepted
            .iter()
            .filter(|id| !seen.contains_key(*id))
            .collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            panic!(
                "{} accepted messages never arrived after the restart, e.g. {:?}\n{}",
                missing.len(),
                missing.iter().take(5).collect::<Vec<_>>(),
                relay.describe()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Late redeliveries would show up now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = arrivals(sink);
    let unknown: Vec<&String> = seen.keys().filter(|id| !accepted.contains(*id)).collect();
    assert!(
        unknown.is_empty(),
        "messages that were never accepted arrived: {unknown:?}"
    );
    let duplicated: Vec<(&String, &(usize, Instant))> =
        seen.iter().filter(|(_, (n, _))| *n > 1).collect();
    for (id, (_, first)) in &duplicated {
        assert!(
            *first < restart_at,
            "{id} was delivered twice after the restart: only a delivery in flight at the kill may repeat"
        );
    }
    let extra_copies = duplicated.iter().map(|(_, (n, _))| n - 1).sum();
    let outcome = Outcome {
        accepted: accepted.len(),
        started_before_restart,
        duplicated_ids: duplicated.len(),
        extra_copies,
    };
    eprintln!(
        "sigkill: {} accepted, {} transactions started at the sink before the restart, {} messages duplicated ({} extra copies)",
        outcome.accepted, outcome.started_before_restart, outcome.duplicated_ids, outcome.extra_copies
    );
    assert!(
        outcome.duplicated_ids <= outcome.started_before_restart,
        "duplicates ({}) exceed the transactions in flight at the kill ({})",
        outcome.duplicated_ids,
        outcome.started_before_restart
    );
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_after_250_loses_no_accepted_message() {
    // The MX holds every delivery (no greeting) until after the restart: the
    // whole batch is only in the spool when the relay dies.
    let outcome = kill_after_batch_and_restart(Sink::builder().paused(), true).await;
    assert_eq!(outcome.started_before_restart, 0);
    assert_eq!(
        outcome.extra_copies, 0,
        "nothing was in flight, so nothing may repeat"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_deliveries_repeats_only_deliveries_in_flight() {
    // The MX takes a while to answer each end of data, so deliveries are in
    // flight (data received, 250 not yet seen by the relay) at the kill.
    // The bounds are asserted inside: every accepted message arrives, a message
    // arrives twice only if its first copy came before the restart, and there are
    // no more such messages than transactions started before the restart.
    kill_after_batch_and_restart(
        Sink::builder().data_delay(Duration::from_millis(100)),
        false,
    )
    .await;
}
