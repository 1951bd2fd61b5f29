//! A deliberately misbehaving policy plugin, used only by the relay's tests: it loops, eats
//! memory or traps on demand, so the sandbox's time budget, memory cap and fallbacks can be
//! exercised with a real component.
//!
//! # Triggers
//! The local part of the recipient (`on_rcpt`) or of the sender (`on_data`) picks a behaviour;
//! `choose_ip` and `on_bounce` look at the tag `bad` (set by `on_data`'s config or the test):
//!
//! | trigger    | behaviour |
//! |------------|-----------|
//! | `loop`     | spins forever (the relay must time it out) |
//! | `oom`      | allocates until the memory cap (the relay must report `kind=memory`) |
//! | `trap`     | panics (the SDK logs the message, then the instance traps) |
//! | `print`    | writes to stdout and stderr, then has no opinion |
//! | `sleep`    | sleeps through WASI (blocking is not allowed: must trap, not hang) |
//! | `clock`    | rejects with the WASI clock and the host clock in the text |
//! | `count`    | rejects with `count=N`, N from `host::counter_add("count", 1)` |
//! | `throttle` | `host::throttle("bad-plugin", 1, 60000)`: accept, then 451 4.7.1 |
//! | `bigkey`   | stores under a 1 KiB key (the host refuses it: a trap) |
//! | `chatty`   | logs 1000 lines (the host keeps the first few) |
//! | `envelope` | rejects with the transaction as the relay gave it: `ip= helo= tls= user= from= size= rcpts= so_far=` (`so_far` only in `on_rcpt`) |
//! | `accept`, `reject`, `tempfail` | that verdict |
//!
//! Anything else follows the config (JSON from `[plugins.NAME]`):
//!
//! ```json
//! {"rcpt": "none", "data": "none", "text": "reply text",
//!  "tags": {"k": "v"}, "headers": {"X-Name": "value"}, "echo_tags": false,
//!  "pool": "bulk", "not_before": 123, "bounce_class": "mailbox-full"}
//! ```
//!
//! `rcpt` and `data` take `none`, `accept`, `reject`, `tempfail`, `loop`, `oom` or `trap`.
//! `echo_tags` adds a header `X-Seen-Tags` listing the tags the plugin was given.
#![forbid(unsafe_code)]

use std::cell::OnceCell;
use std::collections::BTreeMap;

use plugin_sdk::prelude::*;
use serde::Deserialize;

/// The plugin's config table.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Config {
    /// What on_rcpt does without a trigger.
    rcpt: Mode,
    /// What on_data does without a trigger.
    data: Mode,
    /// Reply text for reject and tempfail.
    text: Option<String>,
    /// Tags on_data sets.
    tags: BTreeMap<String, String>,
    /// Headers on_data adds.
    headers: BTreeMap<String, String>,
    /// Add `X-Seen-Tags` with the tags on_data was given.
    echo_tags: bool,
    /// The pool choose_ip picks.
    pool: Option<String>,
    /// The hold time choose_ip asks for.
    not_before: Option<u64>,
    /// The class on_bounce gives.
    bounce_class: Option<String>,
}

/// A behaviour picked by the config.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    None,
    Accept,
    Reject,
    Tempfail,
    Loop,
    Oom,
    Trap,
}

/// The plugin.
#[derive(Default)]
pub struct BadPlugin {
    config: OnceCell<Config>,
}

/// The local part of an address (`loop@example.test` -> `loop`).
fn local_part(address: &str) -> &str {
    address.split('@').next().unwrap_or("")
}

/// Spins until the relay's epoch deadline stops it.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Allocates (and touches) 1 MiB at a time until the allocator fails and aborts.
fn exhaust_memory() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; 1 << 20];
        if let Some(last) = chunk.last_mut() {
            *last = 1;
        }
        hoard.push(std::hint::black_box(chunk));
    }
}

/// Acts out a misbehaviour by name; returns for any other name.
fn misbehave(trigger: &str, who: &str) {
    match trigger {
        "loop" => spin(),
        "oom" => exhaust_memory(),
        "trap" => panic!("bad-plugin: trap requested by {who}"),
        _ => {}
    }
}

impl BadPlugin {
    fn config(&self) -> &Config {
        self.config.get_or_init(|| {
            host::config_as::<Config>().unwrap_or_else(|err| {
                host::log_error(&format!("bad-plugin: {err}; using the defaults"));
                Config::default()
            })
        })
    }

    fn text(&self) -> String {
        self.config()
            .text
            .clone()
            .unwrap_or_else(|| "refused by bad-plugin".to_string())
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::None => "none",
        Mode::Accept => "accept",
        Mode::Reject => "reject",
        Mode::Tempfail => "tempfail",
        Mode::Loop => "loop",
        Mode::Oom => "oom",
        Mode::Trap => "trap",
    }
}

/// The transaction as one line: what the `envelope` trigger answers.
fn envelope(transaction: &Transaction<'_>) -> String {
    let session = transaction.session();
    let mail_from = transaction.mail_from();
    format!(
        "ip={} helo={} tls={} user={} from={} size={} rcpts={}",
        session.client_ip,
        session.helo,
        session.tls,
        session.auth_user.as_deref().unwrap_or("-"),
        mail_from.address,
        mail_from
            .size
            .map_or("-".to_string(), |size| size.to_string()),
        transaction.recipients().join(",")
    )
}

impl Plugin for BadPlugin {
    const NAME: &'static str = "bad-plugin";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn on_rcpt(&self, input: &RcptInput) -> RcptVerdict {
        let trigger = local_part(&input.recipient);
        misbehave(trigger, &input.recipient);
        match trigger {
            "print" => {
                println!("bad-plugin writes to stdout");
                eprintln!("bad-plugin writes to stderr");
                return RcptVerdict::NoOpinion;
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(1));
                return RcptVerdict::NoOpinion;
            }
            "clock" => {
                let wasi = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let text = format!("wasi-clock={wasi} host-clock={}", host::now_ms());
                return RcptVerdict::reject(550, "5.7.1", &text);
            }
            "count" => {
                let n = host::counter_add("count", 1, None);
                return RcptVerdict::reject(550, "5.7.1", &format!("count={n}"));
            }
            "throttle" => {
                let t = host::throttle("bad-plugin", 1, 60_000);
                if t.allowed {
                    return RcptVerdict::Accept;
                }
                let text = format!("slow down, retry in {} ms", t.retry_after_ms);
                return RcptVerdict::tempfail(451, "4.7.1", &text);
            }
            "bigkey" => {
                host::kv_set(&"k".repeat(1024), b"v", None);
                return RcptVerdict::NoOpinion;
            }
            "chatty" => {
                for i in 0..1000 {
                    host::log_info(&format!("line {i}"));
                }
                return RcptVerdict::NoOpinion;
            }
            "envelope" => {
                let text = format!(
                    "{} so_far={}",
                    envelope(&input.transaction),
                    input.accepted_so_far
                );
                return RcptVerdict::reject(550, "5.7.1", &text);
            }
            "accept" => return RcptVerdict::Accept,
            "reject" => return RcptVerdict::reject(550, "5.7.1", &self.text()),
            "tempfail" => return RcptVerdict::tempfail(451, "4.7.1", &self.text()),
            _ => {}
        }
        let mode = self.config().rcpt;
        misbehave(mode_name(mode), "config");
        match mode {
            Mode::Accept => RcptVerdict::Accept,
            Mode::Reject => RcptVerdict::reject(550, "5.7.1", &self.text()),
            Mode::Tempfail => RcptVerdict::tempfail(451, "4.7.1", &self.text()),
            _ => RcptVerdict::NoOpinion,
        }
    }

    fn on_data(&self, input: &DataInput) -> DataVerdict {
        let sender = &input.mail_from().address;
        misbehave(local_part(sender), sender);
        if local_part(sender) == "envelope" {
            return DataVerdict::reject(550, "5.7.1", &envelope(&input.transaction));
        }
        let config = self.config();
        misbehave(mode_name(config.data), "config");
        let mut verdict = match config.data {
            Mode::Accept => DataVerdict::accept(),
            Mode::Reject => DataVerdict::reject(550, "5.7.1", &self.text()),
            Mode::Tempfail => DataVerdict::tempfail(451, "4.7.1", &self.text()),
            _ => DataVerdict::no_opinion(),
        };
        for (key, value) in &config.tags {
            verdict = verdict.with_tag(key, value);
        }
        for (name, value) in &config.headers {
            verdict = verdict.with_header(name, value);
        }
        if config.echo_tags {
            let seen: Vec<String> = input
                .tags
                .iter()
                .map(|t| format!("{}={}", t.key, t.value))
                .collect();
            verdict = verdict.with_header("X-Seen-Tags", &seen.join(";"));
        }
        verdict
    }

    fn choose_ip(&self, input: &ChooseInput) -> ChooseVerdict {
        if let Some(tag) = input.tags.iter().find(|t| t.key == "bad") {
            misbehave(&tag.value, "tag bad");
        }
        let config = self.config();
        let mut verdict = match &config.pool {
            Some(pool) => ChooseVerdict::pool(pool),
            None => ChooseVerdict::no_opinion(),
        };
        if let Some(at) = config.not_before {
            verdict = verdict.with_not_before(at);
        }
        verdict
    }

    fn on_bounce(&self, input: &BounceInput) -> BounceVerdict {
        if let Some(tag) = input.tags.iter().find(|t| t.key == "bad") {
            misbehave(&tag.value, "tag bad");
        }
        match &self.config().bounce_class {
            Some(class) => BounceVerdict::no_opinion().with_class(class),
            None => BounceVerdict::no_opinion(),
        }
    }
}

plugin_sdk::export_plugin!(BadPlugin, hooks: [on_rcpt, on_data, choose_ip, on_bounce]);

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_sdk::testing::{self, TestHost};

    #[test]
    fn plain_recipients_get_no_opinion_and_verdict_triggers_work() {
        let _host = TestHost::new();
        let p = BadPlugin::default();
        assert_eq!(
            p.on_rcpt(&testing::rcpt("a@x.test", "bob@y.test")),
            RcptVerdict::NoOpinion
        );
        assert_eq!(
            p.on_rcpt(&testing::rcpt("a@x.test", "accept@y.test")),
            RcptVerdict::Accept
        );
        assert!(matches!(
            p.on_rcpt(&testing::rcpt("a@x.test", "reject@y.test")),
            RcptVerdict::Reject(_)
        ));
    }

    #[test]
    fn the_envelope_trigger_answers_with_the_transaction() {
        let _host = TestHost::new();
        let p = BadPlugin::default();
        let input = testing::rcpt("a@x.test", "envelope@y.test")
            .with_size(500)
            .with_auth_user("alice")
            .with_accepted(&["one@y.test", "two@y.test"]);
        match p.on_rcpt(&input) {
            RcptVerdict::Reject(reply) => assert_eq!(
                reply.text,
                "ip=192.0.2.1 helo=client.example.test tls=false user=alice from=a@x.test \
                 size=500 rcpts=one@y.test,two@y.test so_far=2"
            ),
            other => panic!("expected a reject, got {other:?}"),
        }
        let input = testing::message().into_data("envelope@x.test", &["p@y.test", "q@y.test"]);
        match p.on_data(&input).action {
            DataAction::Reject(reply) => assert_eq!(
                reply.text,
                "ip=192.0.2.1 helo=client.example.test tls=false user=- from=envelope@x.test \
                 size=- rcpts=p@y.test,q@y.test"
            ),
            other => panic!("expected a reject, got {other:?}"),
        }
    }

    #[test]
    fn the_config_drives_the_default_verdicts_tags_and_headers() {
        let _host = TestHost::new().with_config(
            r#"{"rcpt": "tempfail", "text": "busy", "tags": {"k": "v"}, "headers": {"X-Bad": "1"}, "echo_tags": true}"#,
        );
        let p = BadPlugin::default();
        match p.on_rcpt(&testing::rcpt("a@x.test", "bob@y.test")) {
            RcptVerdict::Tempfail(reply) => assert_eq!(reply.text, "busy"),
            other => panic!("expected a tempfail, got {other:?}"),
        }
        let input = testing::message().into_data("a@x.test", &["bob@y.test"]);
        let verdict = p.on_data(&input);
        assert_eq!(verdict.tag("k"), Some("v"));
        assert_eq!(verdict.header("X-Bad"), Some("1"));
        assert_eq!(verdict.header("X-Seen-Tags"), Some(""));
    }

    #[test]
    fn count_uses_the_host_counter() {
        let _host = TestHost::new();
        let p = BadPlugin::default();
        for expected in 1..=2 {
            match p.on_rcpt(&testing::rcpt("a@x.test", "count@y.test")) {
                RcptVerdict::Reject(reply) => assert_eq!(reply.text, format!("count={expected}")),
                other => panic!("expected a reject, got {other:?}"),
            }
        }
    }

    #[test]
    #[should_panic(expected = "trap requested")]
    fn trap_panics() {
        let _host = TestHost::new();
        BadPlugin::default().on_rcpt(&testing::rcpt("a@x.test", "trap@y.test"));
    }
}
