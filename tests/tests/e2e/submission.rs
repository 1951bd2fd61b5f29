//! Submission the way apps and mail servers do it: STARTTLS (587 style) and implicit TLS
//! (465 style) with SMTP AUTH PLAIN and LOGIN, driven by real clients (swaks, Python's
//! smtplib) and by a raw client for what those cannot do: STARTTLS command injection, the
//! open-relay tricks, and login brute force. Users are made with `relay user add`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use relay_tests::tls::TestCa;
use relay_tests::{
    run_relay_with_input, DnsServer, Net, RelayProcess, Sink, SmtpClient, Zone, WAIT,
};

const USER: &str = "app@example.com";
const PASSWORD: &str = "correct horse battery staple";

/// A relay with a certificate, a users file and three listeners: the default one from
/// `[server] listen` (STARTTLS offered, AUTH optional: port 25 style), `submission`
/// (STARTTLS, login required: 587) and `smtps` (implicit TLS, login required: 465).
/// Only 127.0.0.1 is in relay_networks; the tests' clients come from 127.A.B.2 and up.
struct World {
    sink: Sink,
    _dns: DnsServer,
    relay: RelayProcess,
    net: Net,
    dir: tempfile::TempDir,
    /// The CA that issued the relay's certificate, which clients trust.
    ca: TestCa,
}

impl World {
    async fn start(auth_extra: &str) -> World {
        let net = Net::unique();
        let sink = Sink::start(net.ip(1)).await;
        let dns = DnsServer::start(Zone::new()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new();
        write_certificate(&ca, dir.path());
        let users = dir.path().join("users");
        add_user(&users, USER, PASSWORD).await;
        let text = format!(
            r#"
[tls]
cert = "{cert}"
key = "{key}"

[auth]
users_file = "{users}"
{auth_extra}

[[listener]]
name = "submission"
address = "127.0.0.1:0"
tls = "starttls"
require_auth = true

[[listener]]
name = "smtps"
address = "127.0.0.1:0"
tls = "implicit"
require_auth = true
"#,
            cert = dir.path().join("cert.pem").display(),
            key = dir.path().join("key.pem").display(),
            users = users.display(),
        );
        let relay = RelayProcess::routed_to(&sink, &dns, |c| {
            c.relay_networks(&["127.0.0.1/32"]).raw(&text)
        })
        .await;
        World {
            sink,
            _dns: dns,
            relay,
            net,
            dir,
            ca,
        }
    }

    async fn port(&self, listener: &str) -> u16 {
        self.relay.listener_addr(listener).await.port()
    }

    fn users_file(&self) -> PathBuf {
        self.dir.path().join("users")
    }
}

/// A new certificate for relay.test from `ca`, and its key, as cert.pem and key.pem in `dir`
/// (the key first, as a renewal script would); returns the certificate (DER).
fn write_certificate(ca: &TestCa, dir: &Path) -> Vec<u8> {
    let (chain, key) = ca.issue(&["relay.test"]);
    let cert_tmp = dir.join(".cert.tmp");
    let key_tmp = dir.join(".key.tmp");
    std::fs::write(&cert_tmp, &chain).expect("write cert");
    std::fs::write(&key_tmp, key).expect("write key");
    std::fs::rename(&key_tmp, dir.join("key.pem")).expect("rename key");
    std::fs::rename(&cert_tmp, dir.join("cert.pem")).expect("rename cert");
    CertificateDer::from_pem_slice(chain.as_bytes())
        .expect("PEM")
        .to_vec()
}

/// `relay user add NAME --file USERS --password-stdin`.
async fn add_user(users: &Path, name: &str, password: &str) {
    let file = users.display().to_string();
    let out = run_relay_with_input(
        &["user", "add", name, "--file", &file, "--password-stdin"],
        format!("{password}\n").as_bytes(),
        WAIT,
    )
    .await;
    assert!(out.status.success(), "relay user add failed: {out:?}");
}

/// Runs swaks with `args`; returns whether it succeeded and everything it printed.
async fn swaks(args: &[String]) -> (bool, String) {
    let child = tokio::process::Command::new("swaks")
        .args(args)
        .args(["--timeout", "15"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(60), child).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("cannot run swaks (make setup installs it): {e}"),
        Err(_) => panic!("swaks did not finish within 60s"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn swaks_args(world: &World, listener: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--server",
        "127.0.0.1",
        "--port",
        &world.port(listener).await.to_string(),
        "--local-interface",
        &world.net.ip(2).to_string(),
        "--ehlo",
        "app.test",
        "--from",
        USER,
        "--to",
        "rcpt@dest.test",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_submits_with_starttls_and_auth_plain_and_login_and_over_implicit_tls() {
    let world = World::start("").await;
    for (listener, tls, mechanism) in [
        ("submission", "--tls", "PLAIN"),
        ("submission", "--tls", "LOGIN"),
        ("smtps", "--tls-on-connect", "PLAIN"),
    ] {
        let subject = format!("Subject: swaks {listener} {mechanism}");
        let (ok, output) = swaks(
            &swaks_args(
                &world,
                listener,
                &[
                    tls,
                    "--auth",
                    mechanism,
                    "--auth-user",
                    USER,
                    "--auth-password",
                    PASSWORD,
                    "--header",
                    &subject,
                ],
            )
            .await,
        )
        .await;
        assert!(ok, "swaks {listener} {mechanism} failed:\n{output}");
        assert!(output.contains("235 2.7.0"), "{output}");
    }
    let messages = world.sink.wait_for(3, WAIT).await;
    for message in &messages {
        let received = message.header("Received").expect("a Received header");
        assert!(received.contains("with ESMTPSA"), "{received}");
        assert!(
            received.contains("(Authenticated sender: app@example.com)"),
            "{received}"
        );
        assert!(received.contains("(using TLSv1."), "{received}");
    }
    let logins = world
        .relay
        .wait_for_events("auth_ok", &[("user", USER)], 3, WAIT)
        .await;
    assert_eq!(logins.len(), 3, "one login per submission");
    let queued = world
        .relay
        .wait_for_events("received", &[("auth_user", USER)], 3, WAIT)
        .await;
    assert_eq!(queued.len(), 3, "the login is logged with each message");
    // ... and travels with the message as a tag, for choose_ip and on_bounce.
    for event in &queued {
        let tags = relay_tests::field(event, "tags").unwrap_or_default();
        assert!(tags.contains("auth_user=app@example.com"), "{event}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_and_an_unknown_user_are_refused() {
    let world = World::start("").await;
    for (user, password) in [(USER, "wrong"), ("nobody@example.com", PASSWORD)] {
        let (ok, output) = swaks(
            &swaks_args(
                &world,
                "submission",
                &[
                    "--tls",
                    "--auth",
                    "PLAIN",
                    "--auth-user",
                    user,
                    "--auth-password",
                    password,
                ],
            )
            .await,
        )
        .await;
        assert!(!ok, "swaks succeeded with {user}/{password}:\n{output}");
        assert!(output.contains("535 5.7.8"), "{output}");
    }
    assert_eq!(
        world
            .relay
            .wait_for_events("auth_failed", &[], 2, WAIT)
            .await
            .len(),
        2
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(world.sink.messages().is_empty(), "nothing was relayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_before_starttls_is_refused_and_not_offered() {
    let world = World::start("").await;
    let addr = world.relay.listener_addr("submission").await;
    let mut c = SmtpClient::connect_from(IpAddr::V4(world.net.ip(2)), addr)
        .await
        .expect("connect");
    let ehlo = c.ehlo("app.test").await.expect("ehlo");
    assert!(ehlo.has_extension("STARTTLS"), "{ehlo}");
    assert!(
        !ehlo.has_extension("AUTH"),
        "AUTH offered in the clear: {ehlo}"
    );
    let auth = c
        .command(&format!("AUTH PLAIN {}", plain(USER, PASSWORD)))
        .await
        .expect("auth");
    assert_eq!(
        (auth.code, auth.enhanced().as_deref()),
        (538, Some("5.7.11")),
        "{auth}"
    );
    let mail = c
        .command("MAIL FROM:<app@example.com>")
        .await
        .expect("mail");
    assert_eq!(mail.code, 530, "{mail}");
    assert!(world.relay.events("auth_ok", &[]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_may_allow_auth_in_the_clear_for_loopback_clients() {
    let world = World::start(
        "\n[[listener]]\nname = \"local\"\naddress = \"127.0.0.1:0\"\ntls = \"none\"\n\
         auth_in_clear_on_loopback = true\nrequire_auth = true",
    )
    .await;
    let addr = world.relay.listener_addr("local").await;
    let mut c = SmtpClient::connect_from(IpAddr::V4(world.net.ip(2)), addr)
        .await
        .expect("connect");
    let ehlo = c.ehlo("app.test").await.expect("ehlo");
    assert!(!ehlo.has_extension("STARTTLS"), "{ehlo}");
    assert!(ehlo.has_extension("AUTH"), "{ehlo}");
    let auth = c
        .command(&format!("AUTH PLAIN {}", plain(USER, PASSWORD)))
        .await
        .expect("auth");
    assert_eq!(auth.code, 235, "{auth}");
    c.send_mail(
        USER,
        &["rcpt@dest.test"],
        b"From: app@example.com\r\nSubject: local\r\n\r\nhi\r\n",
    )
    .await
    .expect("queued");
    let messages = world.sink.wait_for(1, WAIT).await;
    let received = messages[0].header("Received").expect("Received");
    assert!(received.contains("with ESMTPA"), "{received}");
    // The other listeners still keep AUTH behind TLS.
    let mut c = SmtpClient::connect_from(
        IpAddr::V4(world.net.ip(2)),
        world.relay.listener_addr("submission").await,
    )
    .await
    .expect("connect");
    let ehlo = c.ehlo("app.test").await.expect("ehlo");
    assert!(!ehlo.has_extension("AUTH"), "{ehlo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_submits_with_starttls_login_and_over_smtp_ssl() {
    let world = World::start("").await;
    let script = r#"
import json, os, smtplib, ssl
host = "127.0.0.1"
src = (os.environ["SRC"], 0)
user, password = os.environ["USER_NAME"], os.environ["PASSWORD"]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
msg = "From: {0}\r\nTo: rcpt@dest.test\r\nSubject: smtplib {1}\r\n\r\nhello\r\n"
out = {}
with smtplib.SMTP(host, int(os.environ["SUBMISSION"]), source_address=src, timeout=15) as s:
    s.ehlo("app.test")
    out["auth_in_clear"] = s.has_extn("auth")
    s.starttls(context=ctx)
    s.ehlo("app.test")
    out["auth_over_tls"] = s.esmtp_features.get("auth", "").strip()
    out["login"] = s.login(user, password)[0]
    s.sendmail(user, ["rcpt@dest.test"], msg.format(user, "starttls-plain"))
with smtplib.SMTP(host, int(os.environ["SUBMISSION"]), source_address=src, timeout=15) as s:
    s.starttls(context=ctx)
    s.ehlo("app.test")
    s.user, s.password = user, password
    out["auth_login"] = s.auth("LOGIN", s.auth_login, initial_response_ok=False)[0]
    s.sendmail(user, ["rcpt@dest.test"], msg.format(user, "starttls-login"))
with smtplib.SMTP_SSL(host, int(os.environ["SMTPS"]), source_address=src, timeout=15, context=ctx) as s:
    s.ehlo("app.test")
    out["smtps_login"] = s.login(user, password)[0]
    s.sendmail(user, ["rcpt@dest.test"], msg.format(user, "smtps"))
with smtplib.SMTP_SSL(host, int(os.environ["SMTPS"]), source_address=src, timeout=15, context=ctx) as s:
    s.ehlo("app.test")
    try:
        s.login(user, "wrong password")
        out["wrong"] = 0
    except smtplib.SMTPAuthenticationError as e:
        out["wrong"] = e.smtp_code
print(json.dumps(out))
"#;
    let child = tokio::process::Command::new("python3")
        .args(["-c", script])
        .env("SRC", world.net.ip(2).to_string())
        .env("USER_NAME", USER)
        .env("PASSWORD", PASSWORD)
        .env("SUBMISSION", world.port("submission").await.to_string())
        .env("SMTPS", world.port("smtps").await.to_string())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("python3 finished in time")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "smtplib failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(result["auth_in_clear"], false, "{result}");
    assert_eq!(result["auth_over_tls"], "PLAIN LOGIN", "{result}");
    assert_eq!(result["login"], 235, "{result}");
    assert_eq!(result["auth_login"], 235, "{result}");
    assert_eq!(result["smtps_login"], 235, "{result}");
    assert_eq!(result["wrong"], 535, "{result}");
    let messages = world.sink.wait_for(3, WAIT).await;
    let mut subjects: Vec<String> = messages
        .iter()
        .filter_map(|m| m.header("Subject"))
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        vec![
            "smtplib smtps",
            "smtplib starttls-login",
            "smtplib starttls-plain"
        ]
    );
    let logins = world
        .relay
        .wait_for_events("auth_ok", &[("mechanism", "LOGIN")], 1, WAIT)
        .await;
    assert_eq!(logins.len(), 1, "smtplib's explicit AUTH LOGIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_injected_behind_starttls_are_discarded() {
    let world = World::start("").await;
    let addr = world.relay.listener_addr("submission").await;
    let stream = connect_from(world.net.ip(2).into(), addr).await;
    let mut plain = Lines::new(stream);
    assert_eq!(plain.reply().await.0, 220);
    plain.send("EHLO app.test\r\n").await;
    assert_eq!(plain.reply().await.0, 250);
    // A man in the middle appends commands to the client's STARTTLS (CVE-2011-0411).
    plain
        .send("STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@dest.test>\r\n")
        .await;
    let (code, text) = plain.reply().await;
    assert_eq!(code, 220, "{text}");
    assert!(
        plain.buffered().is_empty(),
        "the injected commands were answered in the clear: {:?}",
        String::from_utf8_lossy(plain.buffered())
    );
    // Had the relay answered the injected commands, those bytes would break the handshake.
    let mut tls = Lines::new(tls_handshake(plain.into_inner(), &world.ca).await);
    // The session starts over: the EHLO from before the handshake is forgotten.
    tls.send("MAIL FROM:<app@example.com>\r\n").await;
    let (code, text) = tls.reply().await;
    assert_eq!(code, 503, "{text}");
    tls.send("EHLO app.test\r\n").await;
    let (code, text) = tls.reply().await;
    assert_eq!(code, 250);
    assert!(
        text.contains("AUTH PLAIN LOGIN") && !text.contains("STARTTLS"),
        "{text}"
    );
    world
        .relay
        .wait_for_event("starttls_input_discarded", &[], WAIT)
        .await;
    assert!(world.sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_relay_networks_cannot_relay_with_any_trick() {
    let world = World::start("").await;
    // The port 25 style listener takes mail without a login, but relays only for 127.0.0.1.
    let addr = world.relay.listener_addr("127.0.0.1:0").await;
    let tricks = [
        "<victim@dest.test>",
        "<victim%dest.test@relay.test>",
        "<victim%dest.test@[127.0.0.1]>",
        "<@relay.test:victim@dest.test>",
        "<@relay.test,@other.test:victim@dest.test>",
        "<\"victim@dest.test\"@relay.test>",
        "<\"victim%dest.test\"@relay.test>",
        "<dest.test!victim@relay.test>",
        "<dest.test!victim>",
        "<victim@dest.test@relay.test>",
        "<victim@relay.test>",
        "<victim@[127.0.0.1]>",
        "<victim@localhost>",
        "<postmaster@dest.test>",
        "victim@dest.test",
    ];
    for rcpt in tricks {
        // A session each: refusals count against the session's error budget (421 after 10).
        let mut c = SmtpClient::connect_from(IpAddr::V4(world.net.ip(2)), addr)
            .await
            .expect("connect");
        c.ehlo("outsider.test").await.expect("ehlo");
        let mail = c
            .command("MAIL FROM:<spammer@outside.test>")
            .await
            .expect("mail");
        assert_eq!(mail.code, 250, "{mail}");
        let reply = c.command(&format!("RCPT TO:{rcpt}")).await.expect("rcpt");
        assert!(
            reply.code >= 500,
            "RCPT TO:{rcpt} from outside relay_networks got {reply}"
        );
        let data = c.command("DATA").await.expect("data");
        assert!(data.code >= 500, "DATA after a refused RCPT got {data}");
    }
    // Over TLS, still without a login: the same.
    let stream = connect_from(world.net.ip(3).into(), addr).await;
    let mut plain = Lines::new(stream);
    plain.reply().await;
    plain.send("EHLO outsider.test\r\n").await;
    plain.reply().await;
    plain.send("STARTTLS\r\n").await;
    assert_eq!(plain.reply().await.0, 220);
    let mut tls = Lines::new(tls_handshake(plain.into_inner(), &world.ca).await);
    tls.send("EHLO outsider.test\r\n").await;
    tls.reply().await;
    tls.send("MAIL FROM:<spammer@outside.test>\r\n").await;
    assert_eq!(tls.reply().await.0, 250);
    tls.send("RCPT TO:<victim@dest.test>\r\n").await;
    let (code, text) = tls.reply().await;
    assert_eq!(code, 554, "{text}");
    assert!(text.contains("5.7.1"), "{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(world.sink.messages().is_empty(), "nothing was relayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_logins_are_slowed_then_locked_out_per_address() {
    let world = World::start("delay_after = 1\nmax_failures = 3\nlockout = \"1h\"").await;
    let addr = world.relay.listener_addr("smtps").await;
    let stream = connect_from(world.net.ip(2).into(), addr).await;
    let mut c = Lines::new(tls_handshake(stream, &world.ca).await);
    assert_eq!(c.reply().await.0, 220);
    c.send("EHLO attacker.test\r\n").await;
    c.reply().await;
    let started = Instant::now();
    for _ in 0..3 {
        c.send(&format!("AUTH PLAIN {}\r\n", plain(USER, "guess")))
            .await;
        let (code, text) = c.reply().await;
        assert_eq!(code, 535, "{text}");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "failures past delay_after are answered late: {:?}",
        started.elapsed()
    );
    // Locked out: even the right password is refused now, and the session ends.
    c.send(&format!("AUTH PLAIN {}\r\n", plain(USER, PASSWORD)))
        .await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("4.7.0"), "{text}");
    world.relay.wait_for_event("auth_lockout", &[], WAIT).await;

    // Another address is not affected.
    let stream = connect_from(world.net.ip(3).into(), addr).await;
    let mut c = Lines::new(tls_handshake(stream, &world.ca).await);
    c.reply().await;
    c.send("EHLO app.test\r\n").await;
    c.reply().await;
    c.send(&format!("AUTH PLAIN {}\r\n", plain(USER, PASSWORD)))
        .await;
    assert_eq!(c.reply().await.0, 235);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_and_a_new_user_take_effect_without_a_restart() {
    let world = World::start("").await;
    let addr = world.relay.listener_addr("smtps").await;
    let stream = connect_from(world.net.ip(2).into(), addr).await;
    let first = presented(&tls_handshake(stream, &world.ca).await);

    let renewed = write_certificate(&world.ca, world.dir.path());
    add_user(
        &world.users_file(),
        "second@example.com",
        "another password",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stream = connect_from(world.net.ip(2).into(), addr).await;
        let now = presented(&tls_handshake(stream, &world.ca).await);
        if now == renewed {
            break;
        }
        assert_eq!(now, first, "neither the old nor the new certificate");
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    world
        .relay
        .wait_for_event("tls_certificate_reloaded", &[], WAIT)
        .await;
    world
        .relay
        .wait_for_event("users_reloaded", &[], WAIT)
        .await;
    let stream = connect_from(world.net.ip(2).into(), addr).await;
    let mut c = Lines::new(tls_handshake(stream, &world.ca).await);
    c.reply().await;
    c.send("EHLO app.test\r\n").await;
    c.reply().await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("second@example.com", "another password")
    ))
    .await;
    assert_eq!(c.reply().await.0, 235);
}

/// The base64 AUTH PLAIN response for `user` and `password`.
fn plain(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

async fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(source, 0)).expect("bind");
    tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// The client side of a TLS handshake with the relay, trusting the test CA only.
async fn tls_handshake(
    stream: TcpStream,
    ca: &TestCa,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(ca.client_config());
    let name = ServerName::try_from("relay.test").expect("name");
    tokio::time::timeout(WAIT, connector.connect(name, stream))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

/// The certificate the relay presented on `stream`.
fn presented(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    let certificates = stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate");
    certificates[0].to_vec()
}

/// SMTP replies over any stream, one line at a time (the raw client works on TCP only).
struct Lines<S> {
    inner: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Lines<S> {
    fn new(stream: S) -> Lines<S> {
        Lines {
            inner: BufReader::new(stream),
        }
    }

    async fn send(&mut self, text: &str) {
        let stream = self.inner.get_mut();
        tokio::time::timeout(WAIT, stream.write_all(text.as_bytes()))
            .await
            .expect("write in time")
            .expect("write");
        stream.flush().await.expect("flush");
    }

    /// One reply: its code and its lines' text joined by newlines.
    async fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.inner.read_line(&mut line))
                .await
                .expect("reply in time")
                .expect("read");
            assert!(
                n > 0,
                "connection closed before a reply; got so far: {text:?}"
            );
            let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            text.push_str(line.get(4..).unwrap_or("").trim_end());
            text.push('\n');
            if line.as_bytes().get(3) != Some(&b'-') {
                return (code, text);
            }
        }
    }

    /// Bytes read from the stream but not consumed yet.
    fn buffered(&self) -> &[u8] {
        self.inner.buffer()
    }

    fn into_inner(self) -> S {
        self.inner.into_inner()
    }
}
