//! countsink: a fast SMTP sink that counts messages and recipients and keeps nothing.
//!
//! Prints `listening on ADDR` as its first line on stdout, then the result when
//! `--expect` messages have arrived, `--timeout` passes, or on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use relay_bench::sink::{Progress, SinkSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A counting SMTP sink for throughput tests: offers PIPELINING, 8BITMIME and
/// SIZE, reads DATA up to <CRLF>.<CRLF>, counts, and throws the bytes away.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed as `listening on ADDR`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Exit once this many messages have been received.
    #[arg(long, value_name = "N")]
    expect: Option<u64>,
    /// Exit after this many seconds whatever has arrived (non-zero if --expect was not reached).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Print a progress line to stderr every second.
    #[arg(long)]
    progress: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Close a connection that sends nothing for this many seconds (with 421).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    idle_timeout: u64,
}

/// Counts shared by every connection.
struct Counters {
    messages: AtomicU64,
    recipients: AtomicU64,
    data_bytes: AtomicU64,
    connections: AtomicU64,
    open: AtomicU64,
    /// When the first transaction began (its MAIL command).
    first: OnceLock<Instant>,
    /// Microseconds from `started` to the latest accepted message.
    last_us: AtomicU64,
    started: Instant,
    expect: Option<u64>,
    reached: Notify,
}

impl Counters {
    fn add(&self, p: &Progress) {
        if p.transactions > 0 {
            self.first.get_or_init(Instant::now);
        }
        if p.messages > 0 {
            let now = self.started.elapsed().as_micros() as u64;
            self.last_us.fetch_max(now, Ordering::Relaxed);
            self.recipients.fetch_add(p.recipients, Ordering::Relaxed);
            let total = self.messages.fetch_add(p.messages, Ordering::Relaxed) + p.messages;
            if self.expect.is_some_and(|n| total >= n) {
                self.reached.notify_one();
            }
        }
        if p.data_bytes > 0 {
            self.data_bytes.fetch_add(p.data_bytes, Ordering::Relaxed);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if args.timeout.is_some_and(|t| !(t > 0.0 && t.is_finite())) {
        anyhow::bail!("--timeout must be a positive number of seconds");
    }
    let started = Instant::now();
    let started_unix_us = unix_us(SystemTime::now());
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener
        .local_addr()
        .context("listening socket has no address")?;
    println!("listening on {local}");

    let counters = Arc::new(Counters {
        messages: AtomicU64::new(0),
        recipients: AtomicU64::new(0),
        data_bytes: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        open: AtomicU64::new(0),
        first: OnceLock::new(),
        last_us: AtomicU64::new(0),
        started,
        expect: args.expect,
        reached: Notify::new(),
    });
    let idle = Duration::from_secs(args.idle_timeout.max(1));
    tokio::spawn(accept_loop(listener, Arc::clone(&counters), idle));
    if args.progress {
        tokio::spawn(progress(Arc::clone(&counters)));
    }

    let timeout = async {
        match args.timeout {
            Some(secs) => tokio::time::sleep(Duration::from_secs_f64(secs)).await,
            None => std::future::pending().await,
        }
    };
    let expected = async {
        match args.expect {
            Some(_) => counters.reached.notified().await,
            None => std::future::pending().await,
        }
    };
    let reason = tokio::select! {
        _ = expected => "expect",
        _ = timeout => "timeout",
        _ = shutdown_signal() => "signal",
    };

    let messages = counters.messages.load(Ordering::Relaxed);
    let first = counters.first.get().copied();
    let first_us = first.map(|f| f.duration_since(started).as_micros() as u64);
    let last_us = counters.last_us.load(Ordering::Relaxed);
    let elapsed = match first_us {
        Some(f) if messages > 0 => last_us.saturating_sub(f) as f64 / 1e6,
        _ => 0.0,
    };
    let rate = if elapsed > 0.0 {
        messages as f64 / elapsed
    } else {
        0.0
    };
    let complete = args.expect.is_none_or(|n| messages >= n);
    if args.json {
        let result = serde_json::json!({
            "listen": local.to_string(),
            "reason": reason,
            "complete": complete,
            "expect": args.expect,
            "messages": messages,
            "recipients": counters.recipients.load(Ordering::Relaxed),
            "data_bytes": counters.data_bytes.load(Ordering::Relaxed),
            "connections": counters.connections.load(Ordering::Relaxed),
            "elapsed_s": elapsed,
            "msgs_per_s": rate,
            "first_unix_us": first_us.map(|f| started_unix_us + f),
            "last_unix_us": (messages > 0).then_some(started_unix_us + last_us),
        });
        println!("{result}");
    } else {
        println!(
            "received {messages} messages ({} recipients, {} bytes, {} connections) \
             in {elapsed:.3} s from the first MAIL to the last message: {rate:.1} msgs/s{}",
            counters.recipients.load(Ordering::Relaxed),
            counters.data_bytes.load(Ordering::Relaxed),
            counters.connections.load(Ordering::Relaxed),
            match (reason, args.expect) {
                ("timeout", Some(n)) if !complete => format!(" (timed out before {n})"),
                _ => String::new(),
            }
        );
    }
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn accept_loop(listener: TcpListener, counters: Arc<Counters>, idle: Duration) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                counters.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(stream, Arc::clone(&counters), idle));
            }
            Err(err) => {
                // Out of file descriptors and the like: wait instead of spinning.
                eprintln!("countsink: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One SMTP connection: read, feed the session, write its replies, repeat.
async fn serve(mut stream: TcpStream, counters: Arc<Counters>, idle: Duration) {
    counters.open.fetch_add(1, Ordering::Relaxed);
    // Replies are small and the client waits for them.
    let _ = stream.set_nodelay(true);
    let mut session = SinkSession::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(4096);
    if write(&mut stream, SinkSession::greeting(), idle).await {
        loop {
            let n = match tokio::time::timeout(idle, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => n,
                Err(_) => {
                    let _ = write(&mut stream, b"421 4.4.2 idle timeout\r\n", idle).await;
                    break;
                }
            };
            out.clear();
            let progress = session.feed(&buf[..n], &mut out);
            counters.add(&progress);
            if !out.is_empty() && !write(&mut stream, &out, idle).await {
                break;
            }
            if progress.close {
                break;
            }
        }
    }
    counters.open.fetch_sub(1, Ordering::Relaxed);
}

/// Writes all of `bytes`; false when the peer is gone or too slow.
async fn write(stream: &mut TcpStream, bytes: &[u8], limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, stream.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

async fn progress(counters: Arc<Counters>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut previous = 0;
    loop {
        tick.tick().await;
        let messages = counters.messages.load(Ordering::Relaxed);
        eprintln!(
            "countsink: {:>6.1}s {messages} messages (+{}/s), {} connections open",
            counters.started.elapsed().as_secs_f64(),
            messages - previous,
            counters.open.load(Ordering::Relaxed),
        );
        previous = messages;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
