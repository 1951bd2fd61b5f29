//! The plugin through the SDK's native test host: pools by tag, sender domain and default,
//! weights, and warm-up caps on the fake clock.

use plugin_sdk::prelude::*;
use plugin_sdk::testing::{self, TestHost};
use serde_json::json;

use super::IpPools;

/// How long an uncapped answer may be reused: `choose::REUSE_MS`, spelled out.
const REUSE_MS: u32 = 60_000;

const HOUR: u64 = 3_600_000;
/// 2026-11-20T00:00:00Z: day 0 of the warm-up in these tests.
const DAY0: u64 = 1_795_132_800_000;
const DAY: u64 = 24 * HOUR;

/// The relay's `[[source]]`s and `[[pool]]`s as `choose_ip` sees them.
fn delivery(id: &str) -> ChooseInput {
    let mut input = testing::choose("example.org")
        .with_source("mta1", "127.0.0.2", "mta1.relay.test")
        .with_source("mta2", "127.0.0.3", "mta2.relay.test")
        .with_source("mta3", "127.0.0.4", "mta3.relay.test")
        .with_source("mta4", "127.0.0.5", "mta4.relay.test")
        .with_pool("shared", &[("mta1", 1)])
        .with_pool("bulk", &[("mta2", 1), ("mta3", 1)])
        .with_pool("vip", &[("mta4", 1)])
        .with_pool("weighted", &[("mta1", 3), ("mta4", 1), ("mta3", 0)]);
    input.message_id = id.to_owned();
    input
}

/// A fresh fake host at 10:00 UTC on day 0 with `config` as the plugin's table.
fn host(config: serde_json::Value) -> TestHost {
    let host = TestHost::new();
    host.set_now_ms(DAY0 + 10 * HOUR);
    host.set_config_value(&config).expect("config is JSON");
    host
}

fn routing() -> serde_json::Value {
    json!({
        "default_pool": "shared",
        "tag_pools": { "class=bulk": "bulk", "class=vip": "vip" },
        "sender_domains": { "news.example": "bulk", "vip.example": "vip" },
    })
}

/// The source name of a `Source` answer the plugin counted and picked itself: no hold, not
/// reusable.
fn source(verdict: &ChooseVerdict) -> &str {
    match verdict {
        ChooseVerdict {
            choice: IpChoice::Source(name),
            not_before: None,
            reuse_ms: 0,
        } => name,
        other => panic!("expected a source without hold or reuse, got {other:?}"),
    }
}

/// The pool name of an uncapped answer: the pool itself for the relay to pick from, no hold,
/// reusable for a minute.
fn pool(verdict: &ChooseVerdict) -> &str {
    match verdict {
        ChooseVerdict {
            choice: IpChoice::Pool(name),
            not_before: None,
            reuse_ms: REUSE_MS,
        } => name,
        other => panic!("expected a reusable pool without hold, got {other:?}"),
    }
}

#[test]
fn describes_itself_as_ip_pools() {
    assert_eq!(IpPools::NAME, "ip-pools");
}

#[test]
fn a_tag_set_in_on_data_chooses_the_pool() {
    let _host = host(routing());
    let plugin = IpPools::default();
    let verdict = plugin.choose_ip(&delivery("m1").with_tag("class", "bulk"));
    assert_eq!(pool(&verdict), "bulk");
    assert_eq!(
        pool(&plugin.choose_ip(&delivery("m1").with_tag("class", "vip"))),
        "vip"
    );
}

#[test]
fn each_choice_is_logged_at_debug_level_only_when_debug_is_on() {
    let host = host(routing());
    let plugin = IpPools::default();
    plugin.choose_ip(&delivery("m1"));
    assert!(
        host.logged_at(
            Level::Debug,
            "message m1 to example.org: pool \"shared\" (default_pool) has no warm-up cap today; \
             the relay picks a source by weight"
        ),
        "{:?}",
        host.logs()
    );
    host.take_logs();
    host.set_log_level(Level::Info);
    assert_eq!(pool(&plugin.choose_ip(&delivery("m2"))), "shared");
    assert!(host.logs().is_empty(), "{:?}", host.logs());
}

#[test]
fn a_counted_pick_is_logged_at_debug_level_with_the_source() {
    let mut config = routing();
    config["warmup"] = json!({ "mta1": { "start": "2026-11-20", "daily": [10] } });
    let host = host(config);
    assert_eq!(
        source(&IpPools::default().choose_ip(&delivery("m1"))),
        "mta1"
    );
    assert!(
        host.logged_at(
            Level::Debug,
            "message m1 to example.org: pool \"shared\" (default_pool) -> source \"mta1\" \
             (127.0.0.2, 1/10 today)"
        ),
        "{:?}",
        host.logs()
    );
}

#[test]
fn tags_are_checked_before_the_sender_domain() {
    let _host = host(routing());
    let input = delivery("m1")
        .with_sender("letters@news.example")
        .with_tag("class", "vip");
    assert_eq!(pool(&IpPools::default().choose_ip(&input)), "vip");
}

#[test]
fn the_sender_domain_chooses_the_pool_without_case() {
    let _host = host(routing());
    let plugin = IpPools::default();
    let verdict = plugin.choose_ip(&delivery("m1").with_sender("Letters@News.Example"));
    assert_eq!(pool(&verdict), "bulk");
    let verdict = plugin.choose_ip(
        &delivery("m1")
            .with_sender("ceo@vip.example")
            .with_tag("class", "other"),
    );
    assert_eq!(
        pool(&verdict),
        "vip",
        "a tag that matches nothing falls through"
    );
}

#[test]
fn the_default_pool_applies_when_nothing_matches() {
    let _host = host(routing());
    let plugin = IpPools::default();
    assert_eq!(pool(&plugin.choose_ip(&delivery("m1"))), "shared");
    assert_eq!(
        pool(&plugin.choose_ip(&delivery("m2").with_sender(""))),
        "shared",
        "null sender"
    );
}

#[test]
fn without_a_default_pool_there_is_no_opinion() {
    let host = host(json!({ "sender_domains": { "news.example": "bulk" } }));
    assert_eq!(
        IpPools::default().choose_ip(&delivery("m1")),
        ChooseVerdict::no_opinion()
    );
    assert!(host.logs().is_empty(), "nothing to say: {:?}", host.logs());
}

#[test]
fn counted_picks_follow_the_pool_weights_and_are_stable_per_delivery() {
    // A cap far above what is sent keeps the plugin picking (and counting) itself.
    let _host = host(json!({
        "default_pool": "weighted",
        "warmup": { "mta4": { "start": "2026-11-20", "daily": [1_000_000] } },
    }));
    let plugin = IpPools::default();
    let mut mta1 = 0;
    for i in 0..4000 {
        let id = format!("msg-{i}");
        let first = plugin.choose_ip(&delivery(&id));
        assert_eq!(
            plugin.choose_ip(&delivery(&id)),
            first,
            "a retry picks the same source"
        );
        match source(&first) {
            "mta1" => mta1 += 1,
            "mta4" => {}
            other => panic!("{other} has weight 0 or is not in the pool"),
        }
    }
    assert!(
        (2800..3200).contains(&mta1),
        "weights 3:1 gave mta1 {mta1} of 4000"
    );
}

#[test]
fn sources_without_warmup_are_uncapped_and_not_counted() {
    let host = host(routing());
    let plugin = IpPools::default();
    for i in 0..100 {
        assert_eq!(
            pool(&plugin.choose_ip(&delivery(&format!("m{i}")))),
            "shared"
        );
    }
    assert!(host.counter_keys().is_empty(), "{:?}", host.counter_keys());
}

#[test]
fn an_uncapped_pool_is_answered_as_the_pool_reusable_for_a_minute() {
    let host = host(json!({
        "default_pool": "weighted",
        "sender_domains": { "news.example": "bulk" },
    }));
    let plugin = IpPools::default();
    let first = plugin.choose_ip(&delivery("m1").with_sender("a@news.example"));
    assert_eq!(
        first,
        ChooseVerdict::pool("bulk").reuse_for(REUSE_MS),
        "the relay picks the member by weight"
    );
    // What the relay reuses it for must not change the answer: another message, another
    // local part, another recipient count, later in the day.
    host.set_now_ms(DAY0 + 23 * HOUR);
    let mut other = delivery("m2").with_sender("someone.else@News.Example");
    other.recipients = 40;
    assert_eq!(plugin.choose_ip(&other), first);
    // A weighted pool is answered as the pool too, weight-0 member and all.
    assert_eq!(
        plugin.choose_ip(&delivery("m3")),
        ChooseVerdict::pool("weighted").reuse_for(REUSE_MS)
    );
    assert!(host.counter_keys().is_empty(), "{:?}", host.counter_keys());
}

#[test]
fn a_pool_with_one_capped_member_still_counts_and_is_never_reused() {
    let mut config = routing();
    // mta2 far from its cap, mta3 without one: the plugin still picks and counts.
    config["warmup"] = json!({ "127.0.0.3": { "start": "2026-11-20", "daily": [1000] } });
    let host = host(config);
    let plugin = IpPools::default();
    let mut mta2 = 0;
    for i in 0..100 {
        let input = delivery(&format!("m{i}")).with_tag("class", "bulk");
        let verdict = plugin.choose_ip(&input);
        assert_eq!(verdict.reuse_ms, 0, "{verdict:?}");
        match source(&verdict) {
            "mta2" => mta2 += 1,
            "mta3" => {}
            other => panic!("{other} is not in the bulk pool"),
        }
        assert_eq!(
            plugin.choose_ip(&input).choice,
            verdict.choice,
            "a retry picks the same source"
        );
    }
    assert!(
        (30..70).contains(&mta2),
        "weights 1:1 gave mta2 {mta2} of 100"
    );
    assert_eq!(
        host.counter("sent:127.0.0.3:2026-11-20"),
        Some(2 * mta2),
        "every pick of mta2 is counted, retries included"
    );
    assert_eq!(host.counter("sent:127.0.0.4:2026-11-20"), None);
}

#[test]
fn a_source_at_its_cap_moves_traffic_to_the_other_source() {
    let mut config = routing();
    config["warmup"] = json!({ "127.0.0.3": { "start": "2026-11-20", "daily": [5, 10] } });
    let host = host(config);
    let plugin = IpPools::default();
    let mut picks = Vec::new();
    for i in 0..40 {
        let input = delivery(&format!("m{i}")).with_tag("class", "bulk");
        picks.push(source(&plugin.choose_ip(&input)).to_owned());
    }
    let mta2 = picks.iter().filter(|p| *p == "mta2").count();
    assert_eq!((mta2, picks.len() - mta2), (5, 35), "{picks:?}");
    let last_mta2 = picks
        .iter()
        .rposition(|p| p == "mta2")
        .expect("mta2 was used");
    assert!(
        last_mta2 < 20,
        "mta2 filled its 5 early, then mta3 took the rest: {picks:?}"
    );
    assert_eq!(
        host.counter("sent:127.0.0.3:2026-11-20"),
        Some(5),
        "refused slots are given back"
    );
    assert_eq!(
        host.counter("sent:127.0.0.4:2026-11-20"),
        None,
        "mta3 has no warm-up"
    );
}

#[test]
fn when_every_source_is_capped_the_delivery_waits_for_midnight() {
    let mut config = routing();
    config["warmup"] = json!({
        "127.0.0.3": { "start": "2026-11-20", "daily": [2, 3] },
        "mta3": { "start": "2026-11-20", "daily": [1, 1, 1] },
    });
    let host = host(config);
    let plugin = IpPools::default();
    let bulk = |id: &str| delivery(id).with_tag("class", "bulk");
    let mut picks: Vec<String> = ["m1", "m2", "m3"]
        .iter()
        .map(|id| source(&plugin.choose_ip(&bulk(id))).to_owned())
        .collect();
    picks.sort();
    assert_eq!(picks, ["mta2", "mta2", "mta3"]);

    let held = plugin.choose_ip(&bulk("m4"));
    assert_eq!(held.choice, IpChoice::Pool("bulk".to_owned()));
    assert_eq!(held.not_before, Some(DAY0 + DAY), "the next UTC midnight");
    assert_eq!(
        held.reuse_ms, 0,
        "a hold depends on the clock and the counters"
    );
    assert!(
        host.logged_at(
            Level::Info,
            "every source is at its warm-up cap for 2026-11-20"
        ) && host.logged("until 2026-11-21T00:00:00Z"),
        "{:?}",
        host.logs()
    );
    assert_eq!(host.counter("sent:127.0.0.3:2026-11-20"), Some(2));
    assert_eq!(host.counter("sent:127.0.0.4:2026-11-20"), Some(1));

    // At midnight day 1 opens with the higher cap for mta2 (3) and the same for mta3 (1).
    host.set_now_ms(held.not_before.expect("hold"));
    let mut picks: Vec<String> = (0..4)
        .map(|i| source(&plugin.choose_ip(&bulk(&format!("d1-{i}")))).to_owned())
        .collect();
    picks.sort();
    assert_eq!(picks, ["mta2", "mta2", "mta2", "mta3"]);
    assert_eq!(
        plugin.choose_ip(&bulk("d1-4")),
        ChooseVerdict::pool("bulk").with_not_before(DAY0 + 2 * DAY)
    );
    assert_eq!(host.counter("sent:127.0.0.3:2026-11-21"), Some(3));

    // Day 2: mta2's schedule has ended, mta3 still has a cap of 1: counted, never reused.
    host.set_now_ms(DAY0 + 2 * DAY);
    let picks: Vec<String> = (0..6)
        .map(|i| source(&plugin.choose_ip(&bulk(&format!("d2-{i}")))).to_owned())
        .collect();
    let mta3 = picks.iter().filter(|p| *p == "mta3").count();
    assert_eq!(mta3, 1, "{picks:?}");
    assert_eq!(host.counter("sent:127.0.0.4:2026-11-22"), Some(1));
    assert_eq!(
        host.counter("sent:127.0.0.3:2026-11-22"),
        None,
        "mta2 is warm"
    );
    // Day 3: both schedules have ended: the pool, reusable, and nothing counted.
    host.set_now_ms(DAY0 + 3 * DAY);
    assert_eq!(pool(&plugin.choose_ip(&bulk("d3-0"))), "bulk");
    assert_eq!(host.counter("sent:127.0.0.4:2026-11-23"), None);

    // Day 0's counters expire on their own (TTL two days from creation).
    host.set_now_ms(DAY0 + 10 * HOUR + 2 * DAY);
    assert_eq!(host.counter("sent:127.0.0.3:2026-11-20"), None);
}

#[test]
fn after_the_schedule_ends_a_source_is_uncapped() {
    let config = json!({
        "default_pool": "mta2",
        "warmup": { "127.0.0.3": { "start": "2026-11-18", "daily": [1, 1] } },
    });
    let host = host(config);
    let plugin = IpPools::default();
    for i in 0..50 {
        assert_eq!(
            plugin.choose_ip(&delivery(&format!("m{i}"))),
            ChooseVerdict::source("mta2").reuse_for(REUSE_MS),
            "day 2: warm, so the answer is reusable"
        );
    }
    assert!(host.counter_keys().is_empty(), "{:?}", host.counter_keys());
}

#[test]
fn a_single_source_may_stand_for_a_pool_and_waits_under_its_own_name() {
    let config = json!({
        "default_pool": "mta4",
        "warmup": { "mta4": { "start": "2026-11-25", "daily": [1, 100] } },
    });
    let host = host(config);
    let plugin = IpPools::default();
    assert_eq!(
        source(&plugin.choose_ip(&delivery("m1"))),
        "mta4",
        "before the start: day 0's cap, counted and not reusable"
    );
    let held = plugin.choose_ip(&delivery("m2"));
    assert_eq!(
        held,
        ChooseVerdict::source("mta4").with_not_before(DAY0 + DAY)
    );
    assert_eq!(
        host.counter("sent:127.0.0.5:2026-11-20"),
        Some(1),
        "counted by IP, found by name"
    );
}

#[test]
fn a_zero_cap_sends_nothing_from_that_source() {
    let config = json!({
        "default_pool": "vip",
        "warmup": { "127.0.0.5": { "start": "2026-11-20", "daily": [0, 10] } },
    });
    let host = host(config);
    let verdict = IpPools::default().choose_ip(&delivery("m1"));
    assert_eq!(
        verdict,
        ChooseVerdict::pool("vip").with_not_before(DAY0 + DAY)
    );
    assert_eq!(host.counter("sent:127.0.0.5:2026-11-20"), Some(0));
}

#[test]
fn an_unknown_pool_is_logged_and_gives_no_opinion() {
    let host = host(json!({ "sender_domains": { "news.example": "bulkk" } }));
    let verdict = IpPools::default().choose_ip(&delivery("m1").with_sender("a@news.example"));
    assert_eq!(verdict, ChooseVerdict::no_opinion());
    assert!(
        host.logged_at(
            Level::Error,
            "sender_domains.\"news.example\" names pool \"bulkk\", which is not a [[pool]] or [[source]]"
        ),
        "{:?}",
        host.logs()
    );
}

#[test]
fn a_pool_without_usable_members_gives_no_opinion() {
    let host = host(json!({ "default_pool": "empty" }));
    let input = delivery("m1").with_pool("empty", &[("mta1", 0), ("ghost", 2)]);
    assert_eq!(
        IpPools::default().choose_ip(&input),
        ChooseVerdict::no_opinion()
    );
    assert!(
        host.logged_at(Level::Warn, "member \"ghost\" is not a [[source]]"),
        "{:?}",
        host.logs()
    );
    assert!(
        host.logged_at(Level::Error, "pool \"empty\" (default_pool) has no member"),
        "{:?}",
        host.logs()
    );
}

#[test]
fn a_broken_config_is_logged_on_every_call_and_gives_no_opinion() {
    let host = TestHost::new().with_config(r#"{"default_pool": "shared", "tag_pool": {}}"#);
    let plugin = IpPools::default();
    for _ in 0..2 {
        assert_eq!(
            plugin.choose_ip(&delivery("m1")),
            ChooseVerdict::no_opinion()
        );
    }
    let errors = host
        .logs()
        .iter()
        .filter(|l| l.level == Level::Error && l.message.contains("unknown field `tag_pool`"))
        .count();
    assert_eq!(errors, 2, "{:?}", host.logs());

    let _host = TestHost::new().with_config("not json");
    assert_eq!(
        IpPools::default().choose_ip(&delivery("m1")),
        ChooseVerdict::no_opinion()
    );
}
