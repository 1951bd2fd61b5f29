//! The spool's durability contract: the WAL is synced before `250`, and a spool that cannot
//! take a message answers 4xx, never a `250` for mail that is not safe.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relay_tests::config::toml_str;
use relay_tests::{
    message, new_message_id, DnsServer, Net, RelayProcess, Sink, SmtpClient, Zone, WAIT,
};

/// strace attached to a running process; detached (SIGTERM) when dropped.
struct Strace {
    child: Child,
    stopped: bool,
    output: PathBuf,
}

impl Strace {
    fn attach(pid: u32, output: &Path) -> Strace {
        let child = Command::new("strace")
            .args(["-f", "-qq", "-s", "120", "-o"])
            .arg(output)
            .args([
                "-e",
                "trace=fsync,fdatasync,write,writev,sendto,sendmsg",
                "-p",
                &pid.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run strace (make test installs it): {e}"));
        Strace {
            child,
            stopped: false,
            output: output.to_path_buf(),
        }
    }

    /// Detaches strace and returns everything it wrote.
    fn finish(mut self) -> Vec<String> {
        self.stop();
        self.lines()
    }

    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        // SIGTERM makes strace detach cleanly from every thread of the relay.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.output)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True for a trace line that shows a WAL sync returning successfully (`= 0`), whether
/// strace printed it whole or as the `resumed` half of an interrupted call.
fn is_completed_sync(line: &str) -> bool {
    let sync = line.contains("fdatasync(")
        || line.contains("fsync(")
        || line.contains("<... fdatasync resumed>")
        || line.contains("<... fsync resumed>");
    sync && line.trim_end().ends_with("= 0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_sync_returns_before_the_250_is_written() {
    let net = Net::unique();
    let sink = Sink::start(net.ip(1)).await;
    let dns = DnsServer::start(Zone::new()).await;
    let relay = RelayProcess::routed_to(&sink, &dns, |c| c).await;
    let pid = relay.pid().expect("relay runs");
    let trace = Strace::attach(pid, &relay.dir().join("strace.txt"));

    // strace has attached once the relay's idle threads show up in its output; send a
    // probe session until they do, then the real message.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut probe = SmtpClient::connect(relay.addr()).await.expect("connect");
        let _ = probe.command("NOOP").await;
        let _ = probe.quit().await;
        if trace.lines().iter().any(|l| l.contains("250 2.0.0")) {
            break;
        }
        assert!(Instant::now() < deadline, "strace never attached");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
    let body = message(
        "a@sender.test",
        &["b@rcpt.test"],
        "durability",
        &new_message_id(),
        "synced before 250\r\n",
    );
    let id = client
        .send_mail("a@sender.test", &["b@rcpt.test"], &body)
        .await
        .expect("queued");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = trace.finish();

    let go_ahead = lines
        .iter()
        .rposition(|l| l.contains("354 "))
        .unwrap_or_else(|| panic!("no 354 in the trace:\n{}", lines.join("\n")));
    let queued = lines
        .iter()
        .position(|l| l.contains(&format!("250 2.0.0 Ok: queued as {id}")))
        .unwrap_or_else(|| panic!("no 250 for {id} in the trace:\n{}", lines.join("\n")));
    assert!(go_ahead < queued);
    let synced = lines[go_ahead..queued].iter().any(|l| is_completed_sync(l));
    assert!(
        synced,
        "no fsync/fdatasync returned between the 354 and the 250 for {id}:\n{}",
        lines[go_ahead..=queued].join("\n")
    );
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "this test mounts a small tmpfs to fill the spool's disk and needs root (mount -t tmpfs)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.path())
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df output")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_answers_452_never_250_and_recovers_when_space_returns() {
    let net = Net::unique();
    // The MX never answers, so every accepted message stays in the spool.
    let sink = Sink::builder().paused().start(net.ip(1)).await;
    let dns = DnsServer::start(Zone::new()).await;
    let disk = SmallDisk::mount(200);
    let spool = disk.path().join("spool");
    let mut relay = RelayProcess::routed_to(&sink, &dns, |c| {
        c.set("spool", "path", &toml_str(&spool.display().to_string()))
            .retry_schedule(&["1h"])
    })
    .await;

    // Leave about 3 MiB, then send 100 KB messages until the disk is full.
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0u8; (disk.free() - 3 * 1024 * 1024) as usize]).expect("filler");
    let text = "y".repeat(70) + "\r\n";
    let mut accepted = Vec::new();
    let mut refused = 0;
    for n in 0..80 {
        let body = message(
            "a@sender.test",
            &["b@rcpt.test"],
            &format!("fill {n}"),
            &new_message_id(),
            &text.repeat(1400),
        );
        let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
        match client
            .send_mail("a@sender.test", &["b@rcpt.test"], &body)
            .await
        {
            Ok(id) => accepted.push(id),
            Err(err) => {
                let reply = err
                    .reply()
                    .expect("refused with a reply, not a dropped connection");
                assert_eq!(
                    (reply.code, reply.enhanced().as_deref()),
                    (452, Some("4.3.1")),
                    "a full spool answers 452 4.3.1: {reply}"
                );
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "the disk never filled ({} accepted)",
        accepted.len()
    );
    assert!(
        !accepted.is_empty(),
        "nothing was accepted before the disk filled"
    );

    // Free the space: the spool resumes by itself (RocksDB's no-space recovery) without a restart.
    std::fs::remove_file(&filler).expect("remove filler");
    let deadline = Instant::now() + Duration::from_secs(40);
    let recovered_id = loop {
        let body = message(
            "a@sender.test",
            &["b@rcpt.test"],
            "after",
            &new_message_id(),
            "x\r\n",
        );
        let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
        if let Ok(id) = client
            .send_mail("a@sender.test", &["b@rcpt.test"], &body)
            .await
        {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "spool did not recover within 40 s of freeing space"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    accepted.push(recovered_id);

    // Every message that got a 250 is really in the spool: restart and count.
    let mark = relay.log_mark();
    relay.restart().await;
    let opened = relay
        .wait_for_log_since(
            mark,
            |l| relay_tests::is_event(l, "spool_opened", &[]),
            WAIT,
        )
        .await;
    let queued: usize = opened
        .get("queued")
        .and_then(|v| v.as_u64())
        .expect("queued count") as usize;
    assert_eq!(
        queued,
        accepted.len(),
        "every 250 is in the spool after a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_below_min_free_space_refuses_mail_from_with_452() {
    let net = Net::unique();
    let sink = Sink::start(net.ip(1)).await;
    let dns = DnsServer::start(Zone::new()).await;
    // More free space than any disk has.
    let relay = RelayProcess::routed_to(&sink, &dns, |c| {
        c.set("spool", "min_free_space", "9000000000000000000")
    })
    .await;
    let mut client = SmtpClient::connect(relay.addr()).await.expect("connect");
    client.ehlo("client.test").await.expect("ehlo");
    let reply = client
        .command("MAIL FROM:<a@sender.test>")
        .await
        .expect("mail");
    assert_eq!(
        (reply.code, reply.enhanced().as_deref()),
        (452, Some("4.3.1")),
        "{reply}"
    );
    assert!(relay.events("received", &[]).is_empty());
}
