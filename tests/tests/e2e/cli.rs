//! The command line: `relay check-config`, `relay sink`, and the README quick-start with real third-party clients.

use std::process::Stdio;
use std::time::Duration;

use relay_tests::config::line_of;
use relay_tests::{
    check_config, DnsServer, RelayConfig, RelayProcess, SinkProcess, SmtpClient, Zone, WAIT,
};

fn dummy_dns() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 53))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_names_file_line_field_and_reason_for_a_bad_duration() {
    let text = RelayConfig::new(dummy_dns(), 25)
        .retry_schedule(&["1s", "5x"])
        .to_toml();
    let line = line_of(&text, "retry_schedule").expect("retry_schedule line");
    let checked = check_config(&text).await;
    let out = &checked.output;
    assert!(!out.status.success(), "a bad duration is an error: {out:?}");
    let location = format!("{}:{line}:", checked.path.display());
    assert!(
        out.stderr.contains(&location),
        "stderr names {location}: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("[delivery]"),
        "stderr names the section: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("retry_schedule"),
        "stderr names the field: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("5x"),
        "stderr quotes the bad value: {}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_names_the_line_of_a_misspelt_key() {
    let text = RelayConfig::new(dummy_dns(), 25)
        .set("server", "max_recipeints", "5")
        .to_toml();
    let line = line_of(&text, "max_recipeints").expect("line");
    let checked = check_config(&text).await;
    let out = &checked.output;
    assert!(
        !out.status.success(),
        "an unknown key is an error, not a silent default: {out:?}"
    );
    assert!(
        out.stderr
            .contains(&format!("{}:{line}:", checked.path.display())),
        "stderr names the file and line {line}: {}",
        out.stderr
    );
    assert!(out.stderr.contains("max_recipeints"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_accepts_a_good_config() {
    let text = RelayConfig::new(dummy_dns(), 25)
        .retry_schedule(&["5m", "10m", "30m", "1h", "2h", "4h"])
        .route("upstream.test", "127.0.0.1:2600")
        .to_toml();
    let checked = check_config(&text).await;
    assert!(checked.output.status.success(), "{:?}", checked.output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_sink_stores_each_message_as_eml_and_json() {
    let sink = SinkProcess::start(&[]).await;
    let mut c = SmtpClient::connect(sink.addr()).await.expect("connect");
    let id = relay_tests::new_message_id();
    let body = relay_tests::message(
        "a@x.test",
        &["b@y.test", "c@y.test"],
        "to the sink",
        &id,
        "sink body",
    );
    c.send_mail("a@x.test", &["b@y.test", "c@y.test"], &body)
        .await
        .expect("accepted");
    let stored = sink.wait_for(1, WAIT).await;
    assert_eq!(stored.len(), 1);
    let (eml, envelope) = &stored[0];
    let eml = String::from_utf8_lossy(eml);
    assert!(
        eml.contains("Subject: to the sink") && eml.contains("sink body"),
        "{eml}"
    );
    assert!(eml.contains(&id), "{eml}");
    let envelope = envelope.as_ref().expect("json envelope");
    assert_eq!(envelope["mail_from"], "a@x.test", "{envelope}");
    assert_eq!(
        envelope["rcpt_to"],
        serde_json::json!(["b@y.test", "c@y.test"]),
        "{envelope}"
    );
    assert_eq!(envelope["helo"], "client.test", "{envelope}");
    assert!(
        envelope["peer"]
            .as_str()
            .is_some_and(|p| p.contains("127.0.0.1")),
        "{envelope}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_sink_answers_configured_failures() {
    let sink = SinkProcess::start(&[
        "bad@x.test=550 5.1.1 no such user",
        "*@temp.test=451 4.3.0 try later",
    ])
    .await;
    let mut c = SmtpClient::connect(sink.addr()).await.expect("connect");
    c.ehlo("client.test").await.expect("ehlo");
    assert_eq!(
        c.command("MAIL FROM:<a@z.test>").await.expect("mail").code,
        250
    );
    let bad = c.command("RCPT TO:<bad@x.test>").await.expect("rcpt");
    assert_eq!(
        (bad.code, bad.enhanced().as_deref()),
        (550, Some("5.1.1")),
        "{bad}"
    );
    assert!(bad.text().contains("no such user"), "{bad}");
    let temp = c.command("RCPT TO:<anyone@temp.test>").await.expect("rcpt");
    assert_eq!(
        (temp.code, temp.enhanced().as_deref()),
        (451, Some("4.3.0")),
        "{temp}"
    );
    let good = c.command("RCPT TO:<good@x.test>").await.expect("rcpt");
    assert_eq!(good.code, 250, "{good}");
}

/// The README quick-start: a relay routing everything to `relay sink`, fed by `command`.
async fn quick_start(
    feed: impl FnOnce(std::net::SocketAddr) -> tokio::process::Command,
    subject: &str,
) {
    let sink = SinkProcess::start(&[]).await;
    let dns = DnsServer::start(Zone::new()).await;
    let config = RelayConfig::new(dns.addr(), 9).route("*", &sink.addr().to_string());
    let relay = RelayProcess::start(&config.to_toml()).await;
    let mut command = feed(relay.addr());
    command.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("client finished in time")
        .unwrap_or_else(|e| panic!("cannot run the client (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "client failed: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        relay.describe()
    );
    let stored = sink.wait_for(1, WAIT).await;
    let eml = String::from_utf8_lossy(&stored[0].0);
    assert!(eml.contains(subject), "{eml}");
    assert!(
        eml.to_ascii_lowercase().starts_with("received:"),
        "the relay prepended Received: {eml}"
    );
    assert_eq!(dns.total_queries(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_through_the_relay_reaches_relay_sink() {
    quick_start(
        |relay| {
            let mut c = tokio::process::Command::new("swaks");
            c.args([
                "--server",
                &relay.ip().to_string(),
                "--port",
                &relay.port().to_string(),
            ])
            .args(["--from", "me@example.test", "--to", "you@example.test"])
            .args([
                "--header",
                "Subject: quick start via swaks",
                "--body",
                "hello from swaks",
            ]);
            c
        },
        "Subject: quick start via swaks",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_through_the_relay_reaches_relay_sink() {
    quick_start(
        |relay| {
            let script = format!(
                "import smtplib\n\
                 from email.message import EmailMessage\n\
                 m = EmailMessage()\n\
                 m['From'] = 'me@example.test'\n\
                 m['To'] = 'you@example.test'\n\
                 m['Subject'] = 'quick start via smtplib'\n\
                 m.set_content('hello from python')\n\
                 with smtplib.SMTP('{}', {}, timeout=20) as s:\n    s.send_message(m)\n",
                relay.ip(),
                relay.port()
            );
            let mut c = tokio::process::Command::new("python3");
            c.args(["-c", &script]);
            c
        },
        "Subject: quick start via smtplib",
    )
    .await;
}
