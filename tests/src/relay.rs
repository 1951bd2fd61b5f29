//! Starts the real `relay` binary (serve, check-config, sink), collects its JSON log lines, and kills it.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::config::WORKDIR;

/// How long the relay may take to log `listening` after it was spawned.
const STARTUP: Duration = Duration::from_secs(30);

/// The `relay` binary: `$RELAY_BIN`, else `relay` next to the test's target dir
/// (`target/debug/deps/e2e-HASH` -> `target/debug/relay`).
///
/// Panics with the command to run when it does not exist.
pub fn relay_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RELAY_BIN") {
        return PathBuf::from(p);
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            panic!("cannot find the test executable to locate the relay binary: {e}; set RELAY_BIN")
        }
    };
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(format!("relay{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        panic!(
            "relay binary not found at {}: run `cargo build -p relay` first (with the same \
             CARGO_TARGET_DIR and profile as the tests), or set RELAY_BIN",
            bin.display()
        );
    }
    bin
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads lines from a child's pipe into `sink` until EOF; JSON lines are parsed,
/// anything else is kept as a JSON string.
fn collect_lines(pipe: impl Read + Send + 'static, sink: Arc<Mutex<Vec<Value>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let echo = std::env::var_os("RELAY_TEST_ECHO").is_some();
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if echo {
                eprintln!("[relay] {line}");
            }
            let value = serde_json::from_str::<Value>(&line)
                .ok()
                .filter(Value::is_object)
                .unwrap_or(Value::String(line));
            lock(&sink).push(value);
        }
    })
}

/// A field of a log line as text (strings as is, numbers and the rest as JSON).
pub fn field(line: &Value, name: &str) -> Option<String> {
    match line.get(name)? {
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// True when `line` has `"event": event` and every `(field, value)` matches.
pub fn is_event(line: &Value, event: &str, fields: &[(&str, &str)]) -> bool {
    field(line, "event").as_deref() == Some(event)
        && fields
            .iter()
            .all(|(k, v)| field(line, k).as_deref() == Some(*v))
}

/// A running `relay serve`. Dropping it kills the process (SIGKILL) and, if the
/// test is failing, prints the relay's log.
pub struct RelayProcess {
    binary: PathBuf,
    child: Option<Child>,
    dir: TempDir,
    config_path: PathBuf,
    logs: Arc<Mutex<Vec<Value>>>,
    stdout: Arc<Mutex<Vec<Value>>>,
    readers: Vec<JoinHandle<()>>,
    generation_start: usize,
    addrs: Vec<SocketAddr>,
}

impl RelayProcess {
    /// Writes `config_toml` (with `@WORKDIR@` replaced by a fresh temp dir) and
    /// starts `relay serve --config FILE`; returns once it logged `listening`.
    pub async fn start(config_toml: &str) -> RelayProcess {
        RelayProcess::start_binary(relay_binary(), config_toml).await
    }

    /// A relay that sends every domain to `sink` (route `*`), with `tune` applied to the
    /// test defaults of [`RelayConfig::new`].
    pub async fn routed_to(
        sink: &crate::Sink,
        dns: &crate::DnsServer,
        tune: impl FnOnce(crate::RelayConfig) -> crate::RelayConfig,
    ) -> RelayProcess {
        let config =
            tune(crate::RelayConfig::new(dns.addr(), 9).route("*", &sink.addr().to_string()));
        RelayProcess::start(&config.to_toml()).await
    }

    /// Like [`RelayProcess::start`] with another binary (the launcher's self-tests).
    pub async fn start_binary(binary: PathBuf, config_toml: &str) -> RelayProcess {
        let dir = match tempfile::Builder::new().prefix("relay-e2e-").tempdir() {
            Ok(d) => d,
            Err(e) => panic!("cannot create a temp dir: {e}"),
        };
        let config_path = dir.path().join("relay.toml");
        let text = config_toml.replace(WORKDIR, &dir.path().display().to_string());
        if let Err(e) = std::fs::write(&config_path, text) {
            panic!("cannot write {}: {e}", config_path.display());
        }
        let mut relay = RelayProcess {
            binary,
            child: None,
            dir,
            config_path,
            logs: Arc::new(Mutex::new(Vec::new())),
            stdout: Arc::new(Mutex::new(Vec::new())),
            readers: Vec::new(),
            generation_start: 0,
            addrs: Vec::new(),
        };
        relay.spawn().await;
        relay
    }

    async fn spawn(&mut self) {
        self.generation_start = lock(&self.logs).len();
        let mut child = match Command::new(&self.binary)
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("cannot start {}: {e}", self.binary.display()),
        };
        if let Some(err) = child.stderr.take() {
            self.readers
                .push(collect_lines(err, Arc::clone(&self.logs)));
        }
        if let Some(out) = child.stdout.take() {
            self.readers
                .push(collect_lines(out, Arc::clone(&self.stdout)));
        }
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP;
        loop {
            let addrs = self.listening_addrs();
            if !addrs.is_empty() {
                self.addrs = addrs;
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                // Let the reader threads drain the pipes before reporting.
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "relay exited with {status} before logging {{\"event\":\"listening\"}}\n{}",
                    self.describe()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "relay did not log {{\"event\":\"listening\"}} within {STARTUP:?}\n{}",
                    self.describe()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn listening_addrs(&self) -> Vec<SocketAddr> {
        lock(&self.logs)[self.generation_start..]
            .iter()
            .filter(|l| is_event(l, "listening", &[]))
            .filter_map(|l| field(l, "addr")?.parse().ok())
            .collect()
    }

    /// The first listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every listening address logged by the current process.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        let now = self.listening_addrs();
        if now.is_empty() {
            self.addrs.clone()
        } else {
            now
        }
    }

    /// The address of the listener named `name` (`[[listener]] name`, or the address as
    /// configured for `[server] listen`), as the current process logged it.
    /// Waits up to [`crate::WAIT`] for it: the relay logs each listener as it binds it, and the
    /// process counts as started once the first one is logged.
    pub async fn listener_addr(&self, name: &str) -> SocketAddr {
        let line = self
            .try_wait_for_log_since(
                self.generation_start,
                |l| is_event(l, "listening", &[("listener", name)]),
                crate::WAIT,
            )
            .await;
        match line.and_then(|l| field(&l, "addr")?.parse().ok()) {
            Some(addr) => addr,
            None => panic!("no listener named {name:?} was logged\n{}", self.describe()),
        }
    }

    /// The process id of the running relay.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The working directory (config file, spool).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file the relay was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Every log line so far, across restarts (non-JSON lines as strings).
    pub fn logs(&self) -> Vec<Value> {
        lock(&self.logs).clone()
    }

    /// The number of log lines so far: a mark for [`RelayProcess::wait_for_log_since`].
    pub fn log_mark(&self) -> usize {
        lock(&self.logs).len()
    }

    /// Log lines with `"event": event` and matching fields, across restarts.
    pub fn events(&self, event: &str, fields: &[(&str, &str)]) -> Vec<Value> {
        lock(&self.logs)
            .iter()
            .filter(|l| is_event(l, event, fields))
            .cloned()
            .collect()
    }

    /// Waits for a log line (at index `mark` or later) matching `pred`; `None` on timeout.
    pub async fn try_wait_for_log_since(
        &self,
        mark: usize,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let logs = lock(&self.logs);
                if let Some(l) = logs.iter().skip(mark).find(|l| pred(l)) {
                    return Some(l.clone());
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a log line matching `pred`; panics with the log on timeout.
    pub async fn wait_for_log(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        self.wait_for_log_since(0, pred, timeout).await
    }

    /// Waits for a log line at index `mark` or later matching `pred`; panics with the log on timeout.
    pub async fn wait_for_log_since(
        &self,
        mark: usize,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        match self.try_wait_for_log_since(mark, pred, timeout).await {
            Some(v) => v,
            None => panic!(
                "expected log line not seen within {timeout:?}\n{}",
                self.describe()
            ),
        }
    }

    /// Waits for an event line with matching fields; panics with the log on timeout.
    pub async fn wait_for_event(
        &self,
        event: &str,
        fields: &[(&str, &str)],
        timeout: Duration,
    ) -> Value {
        match self
            .try_wait_for_log_since(0, |l| is_event(l, event, fields), timeout)
            .await
        {
            Some(v) => v,
            None => panic!(
                "expected {{\"event\":{event:?}}} with {fields:?} within {timeout:?}\n{}",
                self.describe()
            ),
        }
    }

    /// Waits until `count` event lines with matching fields were logged; returns them.
    pub async fn wait_for_events(
        &self,
        event: &str,
        fields: &[(&str, &str)],
        count: usize,
        timeout: Duration,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.events(event, fields);
            if found.len() >= count {
                return found;
            }
            if Instant::now() >= deadline {
                panic!(
                    "expected {count} {{\"event\":{event:?}}} lines with {fields:?} within {timeout:?}, saw {}\n{}",
                    found.len(),
                    self.describe()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// SIGKILL (kill -9) and reap the process; the spool stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The pipes close with the process. Let the readers drain them, so a late
        // line of this process is not taken for one of the next; never wait long.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.readers.clear();
    }

    /// Kills the relay if it runs, then starts it again with the same config and spool.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// The log (and any stdout) as text, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = format!("--- relay log ({}) ---\n", self.config_path.display());
        for l in lock(&self.logs).iter() {
            out.push_str(&l.to_string());
            out.push('\n');
        }
        let stdout = lock(&self.stdout);
        if !stdout.is_empty() {
            out.push_str("--- relay stdout ---\n");
            for l in stdout.iter() {
                out.push_str(&l.to_string());
                out.push('\n');
            }
        }
        out.push_str("--- end of relay log ---");
        out
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.describe());
        }
    }
}

/// What a finished `relay` subcommand printed.
#[derive(Debug)]
pub struct CommandOutput {
    /// The exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `relay ARGS...` to completion (killed after `timeout`).
pub async fn run_relay(args: &[&str], timeout: Duration) -> CommandOutput {
    run_relay_with_input(args, b"", timeout).await
}

/// Runs `relay ARGS...` with `input` on its standard input, to completion (killed after
/// `timeout`).
pub async fn run_relay_with_input(args: &[&str], input: &[u8], timeout: Duration) -> CommandOutput {
    use tokio::io::AsyncWriteExt as _;
    let bin = relay_binary();
    let child = tokio::process::Command::new(&bin)
        .args(args)
        .stdin(if input.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => panic!("cannot start {}: {e}", bin.display()),
    };
    if let Some(mut stdin) = child.stdin.take() {
        if let Err(e) = stdin.write_all(input).await {
            panic!("relay {args:?}: cannot write its input: {e}");
        }
    }
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => CommandOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("relay {args:?} failed to run: {e}"),
        Err(_) => panic!("relay {args:?} did not finish within {timeout:?}"),
    }
}

/// The result of `relay check-config` on a config written to a temp file.
#[derive(Debug)]
pub struct CheckConfig {
    /// What the command printed and its status.
    pub output: CommandOutput,
    /// The config file that was checked.
    pub path: PathBuf,
    _dir: TempDir,
}

/// Writes `config_toml` (with `@WORKDIR@` replaced) and runs `relay check-config --config FILE`.
pub async fn check_config(config_toml: &str) -> CheckConfig {
    let dir = match tempfile::Builder::new().prefix("relay-check-").tempdir() {
        Ok(d) => d,
        Err(e) => panic!("cannot create a temp dir: {e}"),
    };
    let path = dir.path().join("relay.toml");
    let text = config_toml.replace(WORKDIR, &dir.path().display().to_string());
    if let Err(e) = std::fs::write(&path, text) {
        panic!("cannot write {}: {e}", path.display());
    }
    let path_str = path.display().to_string();
    let output = run_relay(
        &["check-config", "--config", &path_str],
        Duration::from_secs(30),
    )
    .await;
    CheckConfig {
        output,
        path,
        _dir: dir,
    }
}

/// A running `relay sink --listen ADDR --dir DIR [--fail RULE]...`. Dropping it kills it.
pub struct SinkProcess {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
    output: Arc<Mutex<Vec<Value>>>,
}

impl SinkProcess {
    /// Starts `relay sink` on a free 127.0.0.1 port with `--fail` rules
    /// (e.g. `"bad@x.test=550 5.1.1 no such user"`); returns once it greets.
    pub async fn start(fail_rules: &[&str]) -> SinkProcess {
        let bin = relay_binary();
        let dir = match tempfile::Builder::new().prefix("relay-sink-").tempdir() {
            Ok(d) => d,
            Err(e) => panic!("cannot create a temp dir: {e}"),
        };
        let mut last = String::new();
        // The port is picked free and then handed over: another process may grab
        // it in between, so a failed start is retried with another port.
        for _ in 0..5 {
            let port = match crate::net::free_port(Ipv4Addr::LOCALHOST) {
                Ok(p) => p,
                Err(e) => panic!("no free port: {e}"),
            };
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let mut cmd = Command::new(&bin);
            cmd.arg("sink")
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--dir")
                .arg(dir.path());
            for rule in fail_rules {
                cmd.arg("--fail").arg(rule);
            }
            let mut child = match cmd
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
            {
                Ok(c) => c,
                Err(e) => panic!("cannot start {} sink: {e}", bin.display()),
            };
            let output = Arc::new(Mutex::new(Vec::new()));
            if let Some(err) = child.stderr.take() {
                collect_lines(err, Arc::clone(&output));
            }
            if let Some(out) = child.stdout.take() {
                collect_lines(out, Arc::clone(&output));
            }
            let deadline = Instant::now() + STARTUP;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    std::thread::sleep(Duration::from_millis(100));
                    last = format!("`relay sink` exited with {status}: {:?}", lock(&output));
                    break;
                }
                if let Ok(mut c) = crate::client::SmtpClient::connect(addr).await {
                    if c.greeting().code == 220 {
                        let _ = c.command("QUIT").await;
                        return SinkProcess {
                            child,
                            addr,
                            dir,
                            output,
                        };
                    }
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "`relay sink` did not greet on {addr} within {STARTUP:?}: {:?}",
                        lock(&output)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("`relay sink` could not be started: {last}");
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The directory it writes `<id>.eml` and `<id>.json` into.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What it printed so far.
    pub fn output(&self) -> Vec<Value> {
        lock(&self.output).clone()
    }

    /// The stored messages: (the .eml bytes, the parsed .json envelope if present), by file name.
    pub fn messages(&self) -> Vec<(Vec<u8>, Option<Value>)> {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return Vec::new();
        };
        let mut emls: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        emls.sort();
        emls.into_iter()
            .filter_map(|eml| {
                let bytes = std::fs::read(&eml).ok()?;
                let envelope = std::fs::read(eml.with_extension("json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                Some((bytes, envelope))
            })
            .collect()
    }

    /// Waits until at least `count` messages (with their envelope file) are stored.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<(Vec<u8>, Option<Value>)> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.messages();
            if m.len() >= count && m.iter().all(|(_, env)| env.is_some()) {
                return m;
            }
            if Instant::now() >= deadline {
                panic!(
                    "`relay sink` stored {} messages in {}, expected {count} within {timeout:?}; output: {:?}",
                    m.len(),
                    self.dir.path().display(),
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in binary: logs like the relay would, then waits to be killed.
    fn fake_relay(dir: &Path, script: &str) -> PathBuf {
        let path = dir.join("fake-relay");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    #[tokio::test]
    async fn launcher_waits_for_listening_and_collects_json_logs() {
        let bins = tempfile::tempdir().expect("tempdir");
        let bin = fake_relay(
            bins.path(),
            r#"echo "config=$3" >&2
echo '{"event":"listening","addr":"127.0.0.1:4321"}' >&2
echo '{"event":"received","msg_id":"m1","rcpts":2}' >&2
exec sleep 30"#,
        );
        let mut relay =
            RelayProcess::start_binary(bin, "[spool]\npath = \"@WORKDIR@/spool\"\n").await;
        assert_eq!(relay.addr(), "127.0.0.1:4321".parse().expect("addr"));
        let written = std::fs::read_to_string(relay.config_path()).expect("config");
        assert!(
            written.contains(&relay.dir().display().to_string()),
            "{written}"
        );
        let line = relay
            .wait_for_event(
                "received",
                &[("msg_id", "m1"), ("rcpts", "2")],
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(field(&line, "rcpts").as_deref(), Some("2"));
        let logs = relay.logs();
        assert!(
            logs[0].as_str().is_some_and(|s| s.starts_with("config=")),
            "{logs:?}"
        );
        assert!(relay.is_running());
        assert!(relay.pid().is_some());
        relay.kill();
        assert!(!relay.is_running());
        assert!(relay.pid().is_none());
    }

    #[tokio::test]
    async fn restart_waits_for_a_new_listening_line() {
        let bins = tempfile::tempdir().expect("tempdir");
        let bin = fake_relay(
            bins.path(),
            r#"n=$(cat "$(dirname "$3")/count" 2>/dev/null || echo 0)
n=$((n+1)); echo $n > "$(dirname "$3")/count"
echo "{\"event\":\"listening\",\"addr\":\"127.0.0.1:100$n\"}" >&2
exec sleep 30"#,
        );
        let mut relay = RelayProcess::start_binary(bin, "").await;
        assert_eq!(relay.addr().port(), 1001);
        let mark = relay.log_mark();
        relay.restart().await;
        assert_eq!(relay.addr().port(), 1002);
        assert_eq!(relay.log_mark(), mark + 1);
    }

    #[tokio::test]
    async fn launcher_reports_early_exit_with_its_output() {
        let bins = tempfile::tempdir().expect("tempdir");
        let bin = fake_relay(
            bins.path(),
            "echo 'relay.toml:3: [dns] timeout: bad' >&2; exit 2",
        );
        let bin2 = bin.clone();
        let result = tokio::spawn(async move { RelayProcess::start_binary(bin2, "").await }).await;
        let Err(panic) = result else {
            panic!("start must fail");
        };
        let message = panic.into_panic();
        let text = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(text.contains("exited"), "{text}");
        assert!(text.contains("[dns] timeout: bad"), "{text}");
    }
}
