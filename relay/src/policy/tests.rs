//! Tests of the plugin runtime with real components: `bad-plugin` (and `hello-plugin`) built
//! for wasm32-wasip2 by [`guest`] when missing or stale.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::inspect::MessageView;

// ---------------------------------------------------------------------------------------------
// Scaffolding
// ---------------------------------------------------------------------------------------------

/// The workspace root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else the ancestor of this test binary that
/// holds `CACHEDIR.TAG`.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace().join("target"))
}

/// The newest modification time of the files under `dirs`.
fn newest(dirs: &[PathBuf]) -> SystemTime {
    fn walk(path: &Path, newest: &mut SystemTime) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if let Ok(modified) = meta.modified() {
            *newest = (*newest).max(modified);
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                walk(&entry.path(), newest);
            }
        }
    }
    let mut time = SystemTime::UNIX_EPOCH;
    for dir in dirs {
        walk(dir, &mut time);
    }
    time
}

/// The component of guest crate `krate` (in `crate_dir`), built with
/// `cargo build --target wasm32-wasip2 --release -p krate` when missing or older than its
/// sources or the SDK's. Panics with instructions when the target is not installed.
fn guest_at(krate: &str, crate_dir: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<std::collections::BTreeMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = built.get(krate) {
        return path.clone();
    }
    let target = target_dir();
    let wasm = target
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", krate.replace('-', "_")));
    let root = workspace();
    let sources = newest(&[
        root.join(crate_dir).join("src"),
        root.join(crate_dir).join("Cargo.toml"),
        root.join("plugin-sdk/src"),
        root.join("plugin-sdk/wit"),
        root.join("plugin-sdk/Cargo.toml"),
    ]);
    let fresh = std::fs::metadata(&wasm)
        .and_then(|m| m.modified())
        .is_ok_and(|built_at| built_at >= sources);
    if !fresh {
        let sysroot = std::process::Command::new("rustc")
            .args(["--print", "sysroot"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        if !Path::new(&sysroot)
            .join("lib/rustlib/wasm32-wasip2")
            .exists()
        {
            panic!(
                "the wasm32-wasip2 target is not installed, so the test plugins cannot be built: \
                 run `make plugins` (or `rustup target add wasm32-wasip2`) and test again"
            );
        }
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let output = std::process::Command::new(cargo)
            .args([
                "build",
                "--target",
                "wasm32-wasip2",
                "--release",
                "-p",
                krate,
            ])
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("run cargo");
        assert!(
            output.status.success(),
            "building {krate} for wasm32-wasip2 failed (try `make plugins`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(wasm.exists(), "{} was not built", wasm.display());
    built.insert(krate.to_string(), wasm.clone());
    wasm
}

/// `bad-plugin`'s component.
fn bad_plugin() -> PathBuf {
    guest_at("bad-plugin", "plugins/bad-plugin")
}

/// A compile cache shared by the tests, so each component is compiled once per build.
fn shared_cache() -> PathBuf {
    target_dir().join("tmp/relay-policy-test-cache")
}

/// Installs `src` as `dir/name` the way operators should: write, then rename.
fn install(src: &Path, dir: &Path, name: &str) {
    install_bytes(&std::fs::read(src).expect("read plugin"), dir, name);
}

fn install_bytes(bytes: &[u8], dir: &Path, name: &str) {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, bytes).expect("write plugin");
    std::fs::rename(&tmp, dir.join(name)).expect("rename plugin");
}

/// The component with a custom section appended: same behaviour, different hash.
fn variant(bytes: &[u8], label: &str) -> Vec<u8> {
    let name = b"relay-test";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(label.as_bytes());
    assert!(payload.len() < 128, "keep the LEB128 size one byte");
    let mut out = bytes.to_vec();
    out.push(0);
    out.push(payload.len() as u8);
    out.extend_from_slice(&payload);
    out
}

/// Settings for a test: small poll interval, the shared cache.
fn settings(dir: &Path) -> PolicySettings {
    let mut s = PolicySettings::new(dir, shared_cache());
    s.poll_interval = Duration::from_millis(100);
    s
}

fn table(priority: i64, config: &str) -> PluginTable {
    PluginTable {
        priority,
        config_json: config.to_string(),
    }
}

fn start(settings: PolicySettings) -> Policy {
    Policy::start(settings, Arc::new(MemoryStateStore::new())).expect("policy starts")
}

/// A directory with `bad-plugin` installed under each of `names`.
fn dir_with(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in names {
        install(&bad_plugin(), dir.path(), &format!("{name}.wasm"));
    }
    dir
}

/// Runs `f` with the log captured (on this thread), returning what was logged.
fn capture<R>(f: impl FnOnce() -> R) -> (R, String) {
    thread_local! {
        static CAPTURED: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
    }
    /// Writes into this thread's capture, if one is running; else nowhere.
    struct ThreadWriter;
    impl std::io::Write for ThreadWriter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            CAPTURED.with(|captured| {
                if let Some(buffer) = captured.borrow_mut().as_mut() {
                    buffer.extend_from_slice(bytes);
                }
            });
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // One global subscriber for the whole test binary, not one per capture: tracing caches
    // whether a log call site is wanted, and a site first reached by another test's thread
    // while a scoped subscriber was being set up could keep "never" and drop this thread's
    // line (it did, now and then, with `with_default`).
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(|| ThreadWriter)
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("nothing else in the relay's unit tests sets a global subscriber");
    });
    // Sites that were being registered while the subscriber was installed get their interest
    // again.
    tracing::callsite::rebuild_interest_cache();
    CAPTURED.with(|captured| *captured.borrow_mut() = Some(Vec::new()));
    let result = f();
    let bytes = CAPTURED
        .with(|captured| captured.borrow_mut().take())
        .unwrap_or_default();
    (result, String::from_utf8_lossy(&bytes).into_owned())
}

/// Waits up to `limit` for `cond`, returning how long it took.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if cond() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn session() -> Session {
    Session {
        client_ip: "192.0.2.1".to_string(),
        helo: "client.example".to_string(),
        tls: false,
        auth_user: None,
    }
}

fn rcpt(to: &str) -> RcptInput {
    RcptInput {
        recipient: to.to_string(),
        accepted_so_far: 0,
    }
}

/// The transaction of `rcpt` and `data`: MAIL FROM `from` on [`session`].
fn transaction(from: &str) -> Arc<TransactionInfo> {
    Arc::new(TransactionInfo {
        session: session(),
        mail_from: MailFrom {
            address: from.to_string(),
            size: Some(100),
            flags: MailFlags::empty(),
        },
        recipients: vec!["rcpt@example.net".to_string()],
    })
}

/// Runs on_rcpt for `rcpt(to)` in a transaction from sender@example.test.
fn ask(set: &PluginSet, to: &str) -> RcptVerdict {
    set.on_rcpt(&rcpt(to), &transaction("sender@example.test"))
}

fn data() -> DataInput {
    DataInput { tags: Vec::new() }
}

/// A small message from `from` to rcpt@example.net, as on_data reads it.
fn message(from: &str) -> Arc<MessageView> {
    Arc::new(MessageView::new(
        format!("Subject: hi\r\nFrom: <{from}>\r\nTo: rcpt@example.net\r\n\r\nhi\r\n").into_bytes(),
    ))
}

/// Runs on_data for `data(from)` and `message(from)`.
fn on_data(set: &PluginSet, from: &str) -> DataVerdict {
    set.on_data(&data(), &transaction(from), &message(from))
}

/// Asks `set` where `input`'s delivery should come from, as the relay does (reuse key first,
/// the input built only for a call).
fn choose_ip(set: &PluginSet, input: &ChooseInput) -> ChooseVerdict {
    set.choose_ip(&super::reuse::key_of(input), || input.clone())
}

pub(super) fn choose(tags: &[(&str, &str)]) -> ChooseInput {
    ChooseInput {
        message_id: "m1".to_string(),
        tags: tags
            .iter()
            .map(|(k, v)| Tag {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        sender: "sender@example.test".to_string(),
        domain: "example.net".to_string(),
        mx_host: "mx.example.net".to_string(),
        recipients: 1,
        sources: vec![Source {
            name: "mta1".to_string(),
            ip: "127.0.0.2".to_string(),
            ehlo: "mta1.example.test".to_string(),
        }],
        pools: vec![Pool {
            name: "bulk".to_string(),
            members: vec![PoolMember {
                source: "mta1".to_string(),
                weight: 1,
            }],
        }],
    }
}

fn bounce(tags: &[(&str, &str)]) -> BounceInput {
    BounceInput {
        message_id: "m1".to_string(),
        recipient: "rcpt@example.net".to_string(),
        sender: "sender@example.test".to_string(),
        attempt: 1,
        kind: FailureKind::RemoteReply,
        reply: SmtpReply {
            code: 552,
            enhanced: "5.2.2".to_string(),
            text: "mailbox full".to_string(),
        },
        permanent: true,
        source_ip: None,
        mx_host: Some("mx.example.net".to_string()),
        tags: choose(tags).tags,
    }
}

fn reply_text(verdict: &RcptVerdict) -> &str {
    match verdict {
        RcptVerdict::Reject(r) | RcptVerdict::Tempfail(r) => &r.text,
        _ => "",
    }
}

fn stats_of(set: &PluginSet, name: &str) -> set::PluginStats {
    set.stats()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("plugin {name} is in the set"))
}

// ---------------------------------------------------------------------------------------------
// Verdicts and ordering
// ---------------------------------------------------------------------------------------------

#[test]
fn verdicts_flow_from_a_real_plugin_for_all_four_hooks() {
    let dir = dir_with(&["bad"]);
    let mut s = settings(dir.path());
    s.plugins.insert(
        "bad".to_string(),
        table(
            100,
            r#"{"tags": {"campaign": "spring"}, "headers": {"X-Bad": "yes"}, "pool": "bulk", "not_before": 1234, "bounce_class": "mailbox-full"}"#,
        ),
    );
    let policy = start(s);
    let set = policy.snapshot();
    assert_eq!(set.names(), vec!["bad".to_string()]);
    assert!(!set.is_empty());
    for hook in [Hook::OnRcpt, Hook::OnData, Hook::ChooseIp, Hook::OnBounce] {
        assert!(set.implements(hook), "{hook:?}");
    }

    assert_eq!(ask(&set, "bob@example.net"), RcptVerdict::NoOpinion);
    assert_eq!(ask(&set, "accept@example.net"), RcptVerdict::Accept);
    match ask(&set, "reject@example.net") {
        RcptVerdict::Reject(reply) => {
            assert_eq!((reply.code, reply.enhanced.as_str()), (550, "5.7.1"));
        }
        other => panic!("expected a reject, got {other:?}"),
    }

    // The transaction handle answers with what the relay lent, in both hooks.
    let tx = Arc::new(TransactionInfo {
        session: Session {
            tls: true,
            auth_user: Some("alice".to_string()),
            ..session()
        },
        ..(*transaction("envelope@example.test")).clone()
    });
    assert_eq!(
        reply_text(&set.on_rcpt(
            &RcptInput {
                accepted_so_far: 1,
                ..rcpt("envelope@example.net")
            },
            &tx
        )),
        "ip=192.0.2.1 helo=client.example tls=true user=alice from=envelope@example.test \
         size=100 rcpts=rcpt@example.net so_far=1"
    );
    match set
        .on_data(&data(), &tx, &message("envelope@example.test"))
        .action
    {
        DataAction::Reject(reply) => assert_eq!(
            reply.text,
            "ip=192.0.2.1 helo=client.example tls=true user=alice from=envelope@example.test \
             size=100 rcpts=rcpt@example.net"
        ),
        other => panic!("expected a reject, got {other:?}"),
    }

    let verdict = on_data(&set, "sender@example.test");
    assert_eq!(verdict.action, DataAction::NoOpinion);
    assert_eq!(
        verdict.tags,
        vec![Tag {
            key: "campaign".to_string(),
            value: "spring".to_string()
        }]
    );
    assert_eq!(
        verdict.add_headers,
        vec![Header {
            name: "X-Bad".to_string(),
            value: "yes".to_string()
        }]
    );

    let choice = choose_ip(&set, &choose(&[]));
    assert_eq!(choice.choice, IpChoice::Pool("bulk".to_string()));
    assert_eq!(choice.not_before, Some(1234));

    let verdict = set.on_bounce(&bounce(&[]));
    assert_eq!(verdict.action, BounceAction::NoOpinion);
    assert_eq!(verdict.class.as_deref(), Some("mailbox-full"));
}

#[test]
fn plugins_run_in_priority_order_and_the_first_opinion_wins() {
    let dir = dir_with(&["a", "b", "c", "d"]);
    let mut s = settings(dir.path());
    s.plugins
        .insert("c".to_string(), table(10, r#"{"rcpt": "none"}"#));
    s.plugins.insert(
        "b".to_string(),
        table(20, r#"{"rcpt": "reject", "text": "from b"}"#),
    );
    s.plugins.insert(
        "a".to_string(),
        table(20, r#"{"rcpt": "reject", "text": "from a"}"#),
    );
    s.plugins
        .insert("d".to_string(), table(5, r#"{"rcpt": "none"}"#));
    let policy = start(s);
    let set = policy.snapshot();
    // Lower priority first; a and b tie at 20 and run in name order.
    assert_eq!(set.names(), vec!["d", "c", "a", "b"]);
    assert_eq!(reply_text(&ask(&set, "bob@example.net")), "from a");
    // A trigger answered by d (the first) wins over the config of the others.
    assert_eq!(ask(&set, "accept@example.net"), RcptVerdict::Accept);
}

#[test]
fn on_data_accumulates_tags_and_headers_and_later_plugins_see_earlier_tags() {
    let dir = dir_with(&["first", "second", "third"]);
    let mut s = settings(dir.path());
    s.plugins.insert(
        "first".to_string(),
        table(1, r#"{"tags": {"campaign": "x"}}"#),
    );
    s.plugins.insert(
        "second".to_string(),
        table(
            2,
            r#"{"data": "reject", "text": "no", "echo_tags": true, "tags": {"pool": "bulk"}}"#,
        ),
    );
    s.plugins.insert(
        "third".to_string(),
        table(
            3,
            r#"{"data": "accept", "echo_tags": true, "tags": {"campaign": "y"}}"#,
        ),
    );
    let policy = start(s);
    let verdict = on_data(&policy.snapshot(), "sender@example.test");
    match &verdict.action {
        DataAction::Reject(reply) => assert_eq!(reply.text, "no"),
        other => panic!("the first opinion (second's reject) wins, got {other:?}"),
    }
    let seen: Vec<&str> = verdict
        .add_headers
        .iter()
        .filter(|h| h.name == "X-Seen-Tags")
        .map(|h| h.value.as_str())
        .collect();
    assert_eq!(seen, vec!["campaign=x", "campaign=x;pool=bulk"]);
    let tags: Vec<(&str, &str)> = verdict
        .tags
        .iter()
        .map(|t| (t.key.as_str(), t.value.as_str()))
        .collect();
    assert_eq!(
        tags,
        vec![("campaign", "x"), ("pool", "bulk"), ("campaign", "y")]
    );
}

/// The on_rcpt calls `name` has had.
fn rcpt_calls(set: &PluginSet, name: &str) -> u64 {
    stats_of(set, name)
        .calls
        .iter()
        .find(|c| c.hook == "on_rcpt")
        .map_or(0, |c| c.calls)
}

#[test]
fn a_batch_gives_each_question_the_answer_it_gets_alone() {
    let dir = dir_with(&["first", "second"]);
    let mut s = settings(dir.path());
    s.plugins.insert(
        "first".to_string(),
        table(1, r#"{"tags": {"campaign": "x"}}"#),
    );
    s.plugins.insert(
        "second".to_string(),
        table(
            2,
            r#"{"rcpt": "tempfail", "text": "from second", "echo_tags": true, "headers": {"X-Second": "1"}}"#,
        ),
    );
    let policy = start(s);
    let set = policy.snapshot();

    // Recipients that first answers (reject, accept, envelope), that only second answers (bob),
    // and that both fault on (trap); each in a transaction of its own.
    let locals = ["reject", "bob", "accept", "trap", "envelope"];
    let questions: Vec<(RcptInput, Arc<TransactionInfo>)> = locals
        .iter()
        .enumerate()
        .map(|(i, local)| {
            (
                rcpt(&format!("{local}@example.net")),
                transaction(&format!("s{i}@example.test")),
            )
        })
        .collect();
    let alone: Vec<RcptVerdict> = questions
        .iter()
        .map(|(input, transaction)| set.on_rcpt(input, transaction))
        .collect();
    assert!(matches!(alone[0], RcptVerdict::Reject(_)), "{alone:?}");
    assert_eq!(reply_text(&alone[1]), "from second");
    assert_eq!(alone[2], RcptVerdict::Accept);
    assert_eq!(alone[3], RcptVerdict::NoOpinion);
    assert!(
        reply_text(&alone[4]).contains("from=s4@example.test"),
        "{alone:?}"
    );
    assert_eq!(rcpt_calls(&set, "second"), 2, "bob and trap reach second");

    let mut batched: Vec<Option<RcptVerdict>> = vec![None; questions.len()];
    set.on_rcpt_each(&mut batched, |i| (&questions[i].0, &questions[i].1));
    let batched: Vec<RcptVerdict> = batched
        .into_iter()
        .map(|v| v.unwrap_or(RcptVerdict::NoOpinion))
        .collect();
    assert_eq!(batched, alone);
    // Second was asked only what first left open, as alone.
    assert_eq!(rcpt_calls(&set, "first"), 10);
    assert_eq!(rcpt_calls(&set, "second"), 4);
    let faults = |name| stats_of(&set, name).faults.trap;
    assert_eq!((faults("first"), faults("second")), (2, 2));

    // on_data: each message keeps its own tags and headers, and its own first opinion.
    let senders = ["sender", "trap", "envelope", "other"];
    let messages: Vec<(DataInput, Arc<TransactionInfo>, Arc<MessageView>)> = senders
        .iter()
        .map(|local| {
            let from = format!("{local}@example.test");
            (data(), transaction(&from), message(&from))
        })
        .collect();
    let alone: Vec<DataVerdict> = senders
        .iter()
        .map(|local| on_data(&set, &format!("{local}@example.test")))
        .collect();
    assert!(
        alone[0].add_headers.iter().any(|h| h.name == "X-Second"),
        "{alone:?}"
    );
    assert!(alone[1].add_headers.is_empty(), "both fault: {alone:?}");
    match &alone[2].action {
        DataAction::Reject(reply) => assert!(reply.text.contains("from=envelope@"), "{reply:?}"),
        other => panic!("first rejects with the envelope, got {other:?}"),
    }
    let mut runs: Vec<set::DataRun<'_>> = messages
        .iter()
        .map(|(input, _, _)| set::DataRun::new(input))
        .collect();
    set.on_data_each(&mut runs, |i| (&messages[i].1, &messages[i].2));
    let batched: Vec<DataVerdict> = runs.into_iter().map(set::DataRun::finish).collect();
    assert_eq!(batched, alone);
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

#[test]
fn a_looping_plugin_times_out_within_its_budget_and_the_next_call_works() {
    let dir = dir_with(&["looper"]);
    let mut s = settings(dir.path());
    s.time_budget = Duration::from_millis(10);
    let policy = start(s);
    let set = policy.snapshot();
    let started = Instant::now();
    let (verdict, log) = capture(|| ask(&set, "loop@example.net"));
    let took = started.elapsed();
    assert_eq!(verdict, RcptVerdict::NoOpinion, "fail-open fallback");
    assert!(took >= Duration::from_millis(10), "stopped early: {took:?}");
    assert!(
        took < Duration::from_millis(150),
        "took {took:?} for a 10 ms budget"
    );
    assert!(log.contains("plugin_fault"), "{log}");
    assert!(log.contains("kind=\"timeout\""), "{log}");
    assert!(log.contains("plugin=looper"), "{log}");
    assert!(log.contains("hook=\"on_rcpt\""), "{log}");
    assert_eq!(stats_of(&set, "looper").faults.timeout, 1);
    assert_eq!(ask(&set, "accept@example.net"), RcptVerdict::Accept);
}

#[test]
fn fail_closed_fallbacks_tempfail_with_451_4_3_0() {
    let dir = dir_with(&["closed"]);
    let mut s = settings(dir.path());
    s.fallback = Fallbacks {
        on_rcpt: Fallback::Tempfail,
        on_data: Fallback::Tempfail,
    };
    let policy = start(s);
    let set = policy.snapshot();
    match ask(&set, "trap@example.net") {
        RcptVerdict::Tempfail(reply) => {
            assert_eq!((reply.code, reply.enhanced.as_str()), (451, "4.3.0"));
        }
        other => panic!("expected the fail-closed fallback, got {other:?}"),
    }
    match on_data(&set, "loop@example.test").action {
        DataAction::Tempfail(reply) => assert_eq!(reply.code, 451),
        other => panic!("expected the fail-closed fallback, got {other:?}"),
    }
    // choose_ip and on_bounce faults are "no opinion" whatever the fallbacks say.
    assert_eq!(
        choose_ip(&set, &choose(&[("bad", "trap")])).choice,
        IpChoice::NoOpinion
    );
    assert_eq!(
        set.on_bounce(&bounce(&[("bad", "loop")])).action,
        BounceAction::NoOpinion
    );
    let faults = stats_of(&set, "closed").faults;
    assert_eq!((faults.trap, faults.timeout), (2, 2), "{faults:?}");
}

#[test]
fn a_memory_bomb_gets_the_fallback_and_is_reported_as_memory() {
    let dir = dir_with(&["hog"]);
    let mut s = settings(dir.path());
    s.memory_limit = 8 << 20;
    // Growing memory is slow in debug builds on a loaded machine: give the bomb time to reach
    // the cap, so the test checks the memory limit and not the time budget.
    s.time_budget = std::time::Duration::from_secs(5);
    let policy = start(s);
    let set = policy.snapshot();
    let (verdict, log) = capture(|| ask(&set, "oom@example.net"));
    assert_eq!(verdict, RcptVerdict::NoOpinion);
    assert!(log.contains("plugin_fault"), "{log}");
    assert_eq!(stats_of(&set, "hog").faults.memory, 1, "{log}");
    assert_eq!(ask(&set, "accept@example.net"), RcptVerdict::Accept);
}

#[test]
fn a_trap_gets_the_fallback_its_panic_message_is_logged_and_a_fresh_instance_serves_next() {
    let dir = dir_with(&["trapper"]);
    let policy = start(settings(dir.path()));
    let set = policy.snapshot();
    let (verdict, log) = capture(|| ask(&set, "trap@example.net"));
    assert_eq!(verdict, RcptVerdict::NoOpinion);
    assert!(
        log.contains("trap requested by trap@example.net"),
        "the SDK forwards the panic: {log}"
    );
    assert!(log.contains("plugin_fault"), "{log}");
    assert_eq!(stats_of(&set, "trapper").faults.trap, 1);
    for _ in 0..3 {
        assert_eq!(ask(&set, "accept@example.net"), RcptVerdict::Accept);
    }
}

#[test]
fn host_limits_trap_with_a_clear_message_and_log_floods_are_cut() {
    let dir = dir_with(&["limits"]);
    let policy = start(settings(dir.path()));
    let set = policy.snapshot();
    let (_, log) = capture(|| ask(&set, "bigkey@example.net"));
    assert!(log.contains("longer than the limit of 512"), "{log}");
    assert_eq!(stats_of(&set, "limits").faults.trap, 1);
    let (verdict, log) = capture(|| ask(&set, "chatty@example.net"));
    assert_eq!(verdict, RcptVerdict::NoOpinion);
    assert!(log.contains("plugin_log_dropped"), "{log}");
    assert!(
        log.matches("plugin_log").count() < 80,
        "the flood was not cut"
    );
}

#[test]
fn quarantine_after_max_faults_and_a_new_file_lifts_it() {
    let dir = dir_with(&["flaky"]);
    let mut s = settings(dir.path());
    s.max_faults = 3;
    let policy = start(s);
    let set = policy.snapshot();
    let (_, log) = capture(|| {
        for _ in 0..3 {
            ask(&set, "trap@example.net");
        }
    });
    assert!(log.contains("plugin_quarantined"), "{log}");
    let stats = stats_of(&set, "flaky");
    assert!(stats.quarantined);
    assert!(
        !set.implements(Hook::OnRcpt),
        "a quarantined plugin is skipped"
    );
    assert_eq!(ask(&set, "accept@example.net"), RcptVerdict::NoOpinion);
    assert_eq!(
        stats_of(&set, "flaky").faults.trap,
        3,
        "skipped calls are not faults"
    );

    let bytes = std::fs::read(bad_plugin()).expect("read");
    install_bytes(&variant(&bytes, "quarantine"), dir.path(), "flaky.wasm");
    let reloaded = wait_for(Duration::from_secs(30), || {
        policy
            .snapshot()
            .stats()
            .iter()
            .any(|s| s.name == "flaky" && !s.quarantined)
    });
    assert!(
        reloaded.is_some(),
        "the new file replaced the quarantined plugin"
    );
    assert_eq!(
        ask(&policy.snapshot(), "accept@example.net"),
        RcptVerdict::Accept
    );
    // The old snapshot still has the quarantined version.
    assert!(stats_of(&set, "flaky").quarantined);
}

#[test]
fn stdio_and_blocking_wasi_calls_never_panic_the_relay_on_a_tokio_worker() {
    let dir = dir_with(&["wasi"]);
    let policy = start(settings(dir.path()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let set = policy.snapshot();
    let results = runtime.block_on(async move {
        tokio::spawn(async move {
            let print = ask(&set, "print@example.net");
            let sleep = ask(&set, "sleep@example.net");
            let clock = ask(&set, "clock@example.net");
            (print, sleep, clock, stats_of(&set, "wasi"))
        })
        .await
    });
    let (print, sleep, clock, stats) = results.expect("the task did not panic");
    assert_eq!(print, RcptVerdict::NoOpinion);
    assert_eq!(
        sleep,
        RcptVerdict::NoOpinion,
        "sleeping traps: the fallback"
    );
    assert_eq!(stats.faults.trap, 1, "only the sleep faulted: {stats:?}");
    let text = reply_text(&clock).to_string();
    assert!(text.starts_with("wasi-clock=0 host-clock="), "{text}");
    let host_clock: u64 = text
        .rsplit('=')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(host_clock > 1_600_000_000_000, "{text}");
}

// ---------------------------------------------------------------------------------------------
// Host API
// ---------------------------------------------------------------------------------------------

#[test]
fn state_is_namespaced_per_plugin_and_throttle_keys_are_shared() {
    let dir = dir_with(&["one", "two"]);
    let mut s = settings(dir.path());
    s.plugins.insert("one".to_string(), table(1, "{}"));
    s.plugins.insert("two".to_string(), table(2, "{}"));
    let state = Arc::new(MemoryStateStore::new());
    let policy = Policy::start(s, state.clone()).expect("start");
    let set = policy.snapshot();
    assert_eq!(reply_text(&ask(&set, "count@example.net")), "count=1");
    assert_eq!(reply_text(&ask(&set, "count@example.net")), "count=2");
    assert_eq!(state.counter_add("one", "count", 0, None), 2);
    assert_eq!(state.counter_add("two", "count", 0, None), 0);

    // `one` answers the first throttle call (allowed: Accept); the key is shared, so the
    // second call is refused whichever plugin makes it.
    assert_eq!(ask(&set, "throttle@example.net"), RcptVerdict::Accept);
    match ask(&set, "throttle@example.net") {
        RcptVerdict::Tempfail(reply) => {
            assert!(reply.text.starts_with("slow down"), "{}", reply.text)
        }
        other => panic!("expected the throttle to refuse, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Loading and hot reload
// ---------------------------------------------------------------------------------------------

#[test]
fn hot_reload_adds_replaces_and_removes_within_a_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(dir.path());
    s.poll_interval = Duration::from_millis(250);
    s.plugins.insert(
        "hot".to_string(),
        table(1, r#"{"rcpt": "reject", "text": "v1"}"#),
    );
    let bytes = std::fs::read(bad_plugin()).expect("read");
    let replacement = variant(&bytes, "hot-reload");
    // Warm the shared cache with both versions, so the timings below measure the reload,
    // not a first compile in a debug build.
    {
        let warm = dir_with(&["warm"]);
        install_bytes(&replacement, warm.path(), "warm2.wasm");
        drop(start(settings(warm.path())));
    }
    let policy = start(s);
    let before = policy.snapshot();
    assert!(before.is_empty());

    install_bytes(&bytes, dir.path(), "hot.wasm");
    let added = wait_for(Duration::from_secs(5), || {
        policy.snapshot().names() == ["hot"]
    });
    assert!(
        added.is_some_and(|t| t < Duration::from_secs(1)),
        "added in {added:?}"
    );
    let v1 = policy.snapshot();
    assert_eq!(reply_text(&ask(&v1, "bob@example.net")), "v1");
    let v1_hash = stats_of(&v1, "hot").sha256;

    install_bytes(&replacement, dir.path(), "hot.wasm");
    let replaced = wait_for(Duration::from_secs(5), || {
        policy
            .snapshot()
            .stats()
            .first()
            .is_some_and(|s| s.sha256 != v1_hash)
    });
    assert!(
        replaced.is_some_and(|t| t < Duration::from_secs(1)),
        "replaced in {replaced:?}"
    );

    std::fs::remove_file(dir.path().join("hot.wasm")).expect("remove");
    let removed = wait_for(Duration::from_secs(5), || policy.snapshot().is_empty());
    assert!(
        removed.is_some_and(|t| t < Duration::from_secs(1)),
        "removed in {removed:?}"
    );

    // A transaction keeps the set it started with.
    assert!(before.is_empty());
    assert_eq!(reply_text(&ask(&v1, "bob@example.net")), "v1");
}

#[test]
fn bad_files_are_refused_with_clear_messages_and_the_old_version_stays_active() {
    let dir = dir_with(&["keeper"]);
    let runtime = Arc::new(
        runtime::Runtime::new(
            runtime::RuntimeOptions::serving(&settings(dir.path())),
            Arc::new(MemoryStateStore::new()),
        )
        .expect("runtime"),
    );
    let mut loader = watch::Loader::new(runtime, settings(dir.path()));
    assert!(loader.scan());
    let good_hash = stats_of(&loader.build_set(), "keeper").sha256;
    let bytes = std::fs::read(bad_plugin()).expect("read");

    let version_0_5: Vec<u8> = {
        let text = b"relay:policy/";
        let mut out = bytes.clone();
        let mut i = 0;
        while i + text.len() + 16 < out.len() {
            if out[i..].starts_with(text) {
                let rest = &mut out[i + text.len()..];
                if let Some(at) = rest.windows(6).take(16).position(|w| w == b"@0.4.0") {
                    rest[at + 3] = b'5';
                }
            }
            i += 1;
        }
        out
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "text",
            b"this is not wasm at all".to_vec(),
            "not a WebAssembly file",
        ),
        // An empty core module: `\0asm`, version 1.
        (
            "core",
            b"\0asm\x01\0\0\0".to_vec(),
            "a core WebAssembly module, not a component",
        ),
        // An empty component: valid, but without the interface.
        (
            "empty",
            b"\0asm\x0d\0\x01\0".to_vec(),
            "does not implement relay:policy@0.4.0",
        ),
        (
            "version",
            version_0_5,
            "built for relay:policy@0.5.0, this relay binds relay:policy@0.4.0",
        ),
        (
            "truncated",
            bytes[..bytes.len() / 2].to_vec(),
            "invalid WebAssembly component",
        ),
    ];
    for (label, bad, expected) in cases {
        install_bytes(&bad, dir.path(), "keeper.wasm");
        let (changed, log) = capture(|| loader.scan());
        assert!(!changed, "{label}: a refused file changes nothing");
        assert!(log.contains("plugin_refused"), "{label}: {log}");
        assert!(
            log.contains("keeper.wasm"),
            "{label}: the line names the file: {log}"
        );
        assert!(
            log.contains(expected),
            "{label}: expected {expected:?} in {log}"
        );
        assert!(log.contains("kept_previous=true"), "{label}: {log}");
        let set = loader.build_set();
        assert_eq!(
            stats_of(&set, "keeper").sha256,
            good_hash,
            "{label}: the old version stays"
        );
        // The same refused file is not retried (or logged) again.
        let (_, again) = capture(|| loader.scan());
        assert!(!again.contains("plugin_refused"), "{label}: {again}");

        let path = dir.path().join(format!("{label}.wasm"));
        std::fs::write(&path, &bad).expect("write");
        let err = check_plugin(&path).expect_err("check refuses it");
        let message = err.to_string();
        assert!(
            message.starts_with(&path.display().to_string()),
            "{message}"
        );
        assert!(message.contains(expected), "{message}");
        std::fs::remove_file(&path).expect("remove");
    }
}

#[test]
fn the_compile_cache_is_used_on_a_second_start() {
    let dir = dir_with(&["cached"]);
    let cache = tempfile::tempdir().expect("tempdir");
    let mut s = settings(dir.path());
    s.cache_dir = cache.path().to_path_buf();
    let (first, log1) = capture(|| start(s.clone()));
    drop(first);
    assert!(log1.contains("cache_hit=Some(false)"), "{log1}");
    let files = walk_files(cache.path());
    assert!(
        !files.is_empty(),
        "the cache directory has the compiled code"
    );
    let (second, log2) = capture(|| start(s.clone()));
    assert!(log2.contains("cache_hit=Some(true)"), "{log2}");
    assert_eq!(
        ask(&second.snapshot(), "accept@example.net"),
        RcptVerdict::Accept
    );
    let compile_ms = |log: &str| -> f64 {
        log.split("compile_ms=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::MAX)
    };
    eprintln!(
        "compile: {} ms, from the cache: {} ms",
        compile_ms(&log1),
        compile_ms(&log2)
    );
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn check_file_reports_name_version_and_hooks() {
    let report = check_file(&bad_plugin()).expect("bad-plugin passes the checks");
    assert_eq!(report.name, "bad_plugin");
    assert_eq!(report.declared_name, "bad-plugin");
    assert_eq!(report.interface, INTERFACE);
    assert_eq!(
        report.hooks,
        vec!["on_rcpt", "on_data", "choose_ip", "on_bounce"]
    );
    let text = report.to_string();
    assert!(
        text.contains("hooks:      on_rcpt, on_data, choose_ip, on_bounce"),
        "{text}"
    );

    if workspace()
        .join("examples/hello-plugin/Cargo.toml")
        .exists()
    {
        let hello = guest_at("hello-plugin", "examples/hello-plugin");
        let report = check_plugin(&hello).expect("hello-plugin passes the checks");
        assert!(!report.hooks.is_empty(), "{report}");
    }

    let missing = check_plugin(Path::new("/nonexistent/x.wasm")).expect_err("missing file");
    assert!(
        missing.to_string().starts_with("/nonexistent/x.wasm: "),
        "{missing}"
    );
}

#[test]
fn a_missing_plugin_directory_is_an_error_at_start() {
    let err = Policy::start(
        settings(Path::new("/nonexistent/plugins")),
        Arc::new(MemoryStateStore::new()),
    )
    .err()
    .expect("start fails");
    assert!(
        err.to_string().starts_with("/nonexistent/plugins: "),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Cost of a hook call
// ---------------------------------------------------------------------------------------------

/// Times `calls` runs of `f` one by one after a warm-up, prints the median, p99, p99.9 and
/// maximum, and returns the median.
fn time_calls(label: &str, calls: usize, f: &dyn Fn()) -> Duration {
    time_calls_between(label, calls, f, &|| {})
}

/// [`time_calls`] running `between` (untimed) before each timed call.
fn time_calls_between(label: &str, calls: usize, f: &dyn Fn(), between: &dyn Fn()) -> Duration {
    for _ in 0..20_000 {
        f();
    }
    let mut samples: Vec<Duration> = (0..calls)
        .map(|_| {
            between();
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    samples.sort();
    let at = |q: usize| samples[(samples.len() * q / 1000).min(samples.len() - 1)];
    let median = at(500);
    eprintln!(
        "{label:<44} median {median:>9.2?}  p99 {:>9.2?}  p99.9 {:>9.2?}  max {:>9.2?}",
        at(990),
        at(999),
        samples[samples.len() - 1]
    );
    median
}

/// A function that pushes everything else out of the CPU caches (and the TLB) by writing to
/// 16 MiB of memory, as the network, parsing and RocksDB work between two hook calls does in
/// the relay.
fn cache_flusher() -> impl Fn() {
    let scratch = std::cell::RefCell::new(vec![0u8; 16 << 20]);
    move || {
        let mut scratch = scratch.borrow_mut();
        for i in (0..scratch.len()).step_by(64) {
            scratch[i] = scratch[i].wrapping_add(1);
        }
        std::hint::black_box(&*scratch);
    }
}

/// The cost of one hook call including marshalling, as median and p99.
///
/// `cargo test --release -p relay policy::tests::hook_call_cost -- --ignored --nocapture`
#[test]
#[ignore = "a benchmark: run with --release --ignored --nocapture"]
fn hook_call_cost() {
    let dir = dir_with(&["bench"]);
    let policy = start(settings(dir.path()));
    let set = policy.snapshot();
    let input = rcpt("bob@example.net");
    let data_input = data();
    let tx = transaction("sender@example.test");
    eprintln!("(an instance is recycled every 10,000 calls)");
    let measure = |label: &str, f: &dyn Fn()| time_calls(label, 200_000, f);
    let rcpt_median = measure("on_rcpt (no opinion)", &|| {
        assert_eq!(set.on_rcpt(&input, &tx), RcptVerdict::NoOpinion);
    });
    let view = message("sender@example.test");
    measure("on_data (no opinion)", &|| {
        set.on_data(&data_input, &tx, &view);
    });
    let flush = cache_flusher();
    let cold = |label: &str, f: &dyn Fn()| time_calls_between(label, 10_000, f, &flush);
    cold("on_rcpt (no opinion), cold caches", &|| {
        set.on_rcpt(&input, &tx);
    });
    cold("on_data (no opinion), cold caches", &|| {
        set.on_data(&data_input, &tx, &view);
    });
    assert!(rcpt_median < Duration::from_micros(50), "{rcpt_median:?}");
}

/// The per-message cost of the four shipped plugins, configured as `bench/plugins.toml`
/// configures them, with the inputs a 2 KB single-part message produces: the hooks in the
/// order a message meets them (on_rcpt, on_data with its message parse, choose_ip).
///
/// `cargo test --release -p relay --lib policy::tests::shipped_plugins_cost -- --ignored --nocapture`
#[test]
#[ignore = "a benchmark: run with --release --ignored --nocapture"]
fn shipped_plugins_cost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(dir.path());
    for (priority, (krate, config)) in [
        (
            "content-policy",
            r#"{"add_header":"X-Content-Policy: checked"}"#,
        ),
        (
            "rate-limit",
            r#"{"per_sender_domain":"100000000/1h","per_client_ip":"100000000/1h"}"#,
        ),
        ("suppression", "{}"),
        ("ip-pools", r#"{"default_pool":"bench"}"#),
    ]
    .into_iter()
    .enumerate()
    {
        install(
            &guest_at(krate, &format!("plugins/{krate}")),
            dir.path(),
            &format!("{krate}.wasm"),
        );
        s.plugins
            .insert(krate.to_string(), table(priority as i64 * 10, config));
    }
    let policy = start(s);
    let set = policy.snapshot();
    assert_eq!(set.names().len(), 4, "all four load: {:?}", set.names());

    let mut raw = b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
From: Load Generator <loadgen@example.test>\r\n\
To: <rcpt@example.net>\r\n\
Subject: loadgen test message 1\r\n\
Message-ID: <1.2@example.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
Content-Transfer-Encoding: 7bit\r\n\
X-Mailer: relay-bench loadgen\r\n\r\n"
        .to_vec();
    while raw.len() < 2048 {
        raw.extend_from_slice(b"the relay queue message delivery server mail report weekly\r\n");
    }
    let rcpt_input = rcpt("rcpt@example.net");
    // As in the relay: one transaction for the on_rcpt calls (no recipient accepted yet) and
    // the same one, with the recipient, for on_data.
    let mut rcpt_tx = TransactionInfo {
        mail_from: MailFrom {
            address: "loadgen@example.test".to_string(),
            size: Some(raw.len() as u64),
            flags: MailFlags::empty(),
        },
        ..(*transaction("loadgen@example.test")).clone()
    };
    rcpt_tx.recipients.clear();
    let data_tx = Arc::new(TransactionInfo {
        recipients: vec!["rcpt@example.net".to_string()],
        ..rcpt_tx.clone()
    });
    let rcpt_tx = Arc::new(rcpt_tx);
    let data_input = data();
    // As in the relay: the received bytes become a view, each plugin asks what it needs.
    let on_data = || {
        set.on_data(
            &data_input,
            &data_tx,
            &Arc::new(MessageView::new(raw.clone())),
        )
    };
    let choose_input = ChooseInput {
        message_id: "01KAQ3ZB6W2T5N8Y4H7J9M0C1D".to_string(),
        tags: Vec::new(),
        sender: "loadgen@example.test".to_string(),
        domain: "example.net".to_string(),
        mx_host: "mx.example.net".to_string(),
        recipients: 1,
        sources: vec![Source {
            name: "lo".to_string(),
            ip: "127.0.0.1".to_string(),
            ehlo: "relay.bench".to_string(),
        }],
        pools: vec![Pool {
            name: "bench".to_string(),
            members: vec![PoolMember {
                source: "lo".to_string(),
                weight: 1,
            }],
        }],
    };
    assert_eq!(set.on_rcpt(&rcpt_input, &rcpt_tx), RcptVerdict::NoOpinion);
    let verdict = on_data();
    assert_eq!(verdict.action, DataAction::NoOpinion, "{verdict:?}");
    assert_eq!(
        verdict.add_headers.len(),
        1,
        "content-policy adds its header"
    );
    assert_eq!(
        choose_ip(&set, &choose_input).choice,
        IpChoice::Pool("bench".to_string()),
        "an uncapped pool: the relay picks the member"
    );
    // A destination not seen before: ip-pools runs (its answer for the bench's single
    // destination is reused after the first call, as in the relay).
    let fresh = std::cell::Cell::new(0u64);
    let fresh_choose_input = || {
        fresh.set(fresh.get() + 1);
        ChooseInput {
            domain: format!("d{}.example.net", fresh.get()),
            ..choose_input.clone()
        }
    };
    assert_eq!(
        choose_ip(&set, &fresh_choose_input()).choice,
        IpChoice::Pool("bench".to_string())
    );

    let measure = |label: &str, f: &dyn Fn()| time_calls(label, 100_000, f);
    measure("  content-policy's questions, host side only", &|| {
        let view = MessageView::new(raw.clone());
        std::hint::black_box((
            view.parts().len(),
            view.header("From"),
            view.from(),
            view.header("Date"),
            view.header("X-Campaign"),
        ));
    });
    let total = measure("on_rcpt (rate-limit, suppression)", &|| {
        set.on_rcpt(&rcpt_input, &rcpt_tx);
    }) + measure("on_data (content-policy), parse included", &|| {
        on_data();
    }) + measure("choose_ip (ip-pools), answer reused", &|| {
        choose_ip(&set, &choose_input);
    });
    eprintln!("per message (sum of the three hooks' medians): {total:.2?}");
    measure("choose_ip (ip-pools) for a new destination", &|| {
        choose_ip(&set, &fresh_choose_input());
    });

    // In the relay a hook call comes between network, parsing and RocksDB work that pushes the
    // plugin's instance out of the CPU caches; this is the same with the caches cleared first.
    let flush = cache_flusher();
    let measure = |label: &str, f: &dyn Fn()| time_calls_between(label, 10_000, f, &flush);
    let reused = measure("choose_ip (ip-pools), answer reused, cold", &|| {
        choose_ip(&set, &choose_input);
    });
    let total = measure("on_rcpt (rate-limit, suppression), cold caches", &|| {
        set.on_rcpt(&rcpt_input, &rcpt_tx);
    }) + measure("on_data (content-policy), parse included, cold", &|| {
        on_data();
    }) + reused;
    eprintln!("per message with cold caches: {total:.2?}");
    measure("choose_ip (ip-pools), new destination, cold", &|| {
        choose_ip(&set, &fresh_choose_input());
    });

    // As a busy relay asks (`policy::batch`): the caches cleared before each batch of
    // questions from as many sessions, the time divided by the batch's size.
    for size in [2, 4, 8] {
        let label = |hook: &str| format!("{hook}, a cold batch of {size}");
        let rcpt_questions = vec![(&rcpt_input, &rcpt_tx); size];
        let on_rcpt = measure(&label("on_rcpt (rate-limit, suppression)"), &|| {
            let mut verdicts = vec![None; size];
            set.on_rcpt_each(&mut verdicts, |i| rcpt_questions[i]);
        }) / size as u32;
        let on_data = measure(&label("on_data (content-policy), parse included"), &|| {
            let views: Vec<Arc<MessageView>> = (0..size)
                .map(|_| Arc::new(MessageView::new(raw.clone())))
                .collect();
            let mut runs: Vec<set::DataRun<'_>> =
                (0..size).map(|_| set::DataRun::new(&data_input)).collect();
            set.on_data_each(&mut runs, |i| (&data_tx, &views[i]));
        }) / size as u32;
        eprintln!(
            "  batches of {size}, per question: on_rcpt {on_rcpt:.2?}, on_data {on_data:.2?}; per message with the reused choose_ip: {:.2?}",
            on_rcpt + on_data + reused
        );
    }
}
