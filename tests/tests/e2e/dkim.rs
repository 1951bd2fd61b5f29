//! What the relay does to a message before it queues it: `[hygiene]` (Date and Message-ID
//! added, a missing or malformed From refused or repaired) and DKIM signing.

use relay_tests::{relay_with_sink, DnsServer, Net, RelayProcess, Sink, SmtpClient, Zone, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_date_or_message_id_gets_both() {
    let (sink, _dns, relay) = relay_with_sink(|c| c).await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    let id = c
        .send_mail(
            "app@x.test",
            &["b@y.test"],
            b"From: App <app@x.test>\r\nSubject: bare\r\n\r\nbody\r\n",
        )
        .await
        .expect("queued");
    let got = sink.wait_for(1, WAIT).await;
    let message = got[0].message();
    assert_eq!(
        message.header("Message-ID"),
        Some(format!("<{id}@relay.test>").as_str())
    );
    let date = message.header("Date").expect("a Date");
    assert!(date.ends_with("+0000") && date.contains(", "), "{date}");
    // A message that has them keeps its own, and gets no second ones.
    c.send_mail(
        "app@x.test",
        &["b@y.test"],
        b"From: app@x.test\r\nDate: Mon, 23 Nov 2026 13:45:00 +0000\r\nMessage-ID: <own@x.test>\r\n\r\nbody\r\n",
    )
    .await
    .expect("queued");
    let got = sink.wait_for(2, WAIT).await;
    let text = got[1].text();
    assert_eq!(text.matches("Message-ID:").count(), 1, "{text}");
    assert_eq!(text.matches("Date:").count(), 1, "{text}");
    assert!(text.contains("Message-ID: <own@x.test>"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_malformed_from_is_refused_by_default() {
    let (sink, _dns, relay) = relay_with_sink(|c| c).await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    for body in [
        &b"Subject: no from\r\n\r\nbody\r\n"[..],
        b"From: a@x.test\r\nFrom: b@x.test\r\nSubject: two\r\n\r\nbody\r\n",
        b"From: nobody at all\r\nSubject: bad\r\n\r\nbody\r\n",
    ] {
        let err = c
            .send_mail("app@x.test", &["b@y.test"], body)
            .await
            .expect_err("refused");
        err.reply().expect("a reply").assert_is(550, "5.6.0");
    }
    let refused = relay.wait_for_events("message_refused", &[], 3, WAIT).await;
    assert_eq!(refused.len(), 3);
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_repair_adds_the_envelope_sender_and_accept_passes_the_message_on() {
    let (sink, _dns, relay) = relay_with_sink(|c| c.raw("[hygiene]\nfrom = \"repair\"\n")).await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    c.send_mail(
        "app@x.test",
        &["b@y.test"],
        b"Subject: no from\r\n\r\nbody\r\n",
    )
    .await
    .expect("repaired and queued");
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].message().header("From"), Some("<app@x.test>"));

    let (sink, _dns, relay) = relay_with_sink(|c| {
        c.raw("[hygiene]\nfrom = \"accept\"\nadd_date = false\nadd_message_id = false\n")
    })
    .await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    c.send_mail(
        "app@x.test",
        &["b@y.test"],
        b"Subject: as is\r\n\r\nbody\r\n",
    )
    .await
    .expect("queued as it is");
    let got = sink.wait_for(1, WAIT).await;
    let message = got[0].message();
    assert_eq!(message.header("From"), None);
    assert_eq!(message.header("Date"), None);
    assert_eq!(message.header("Message-ID"), None);
}

/// A key made with `relay dkim keygen` in `dir`: its file and the TXT value to publish.
async fn keygen(
    dir: &std::path::Path,
    domain: &str,
    selector: &str,
    algo: &str,
) -> (String, String) {
    let file = dir
        .join(format!("{domain}.{selector}.key"))
        .display()
        .to_string();
    let out = relay_tests::run_relay(
        &[
            "dkim",
            "keygen",
            "--domain",
            domain,
            "--selector",
            selector,
            "--algo",
            algo,
            "--out",
            &file,
        ],
        WAIT,
    )
    .await;
    assert!(out.status.success(), "keygen failed: {out:?}");
    let txt = out
        .stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("v=DKIM1"))
        .unwrap_or_else(|| panic!("no TXT value in: {}", out.stdout))
        .to_string();
    (file, txt)
}

/// `[[dkim.key]]` tables for `(domain, selector, file)`.
fn key_tables(keys: &[(&str, &str, &str)]) -> String {
    keys.iter()
        .map(|(domain, selector, file)| {
            format!(
                "[[dkim.key]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey_file = {}\n\n",
                relay_tests::config::toml_str(file)
            )
        })
        .collect()
}

/// mail-auth's verdict on each DKIM-Signature of `message`, its resolver asking the test's DNS
/// server at `dns` for the keys.
async fn mail_auth(message: &[u8], dns: std::net::SocketAddr) -> Vec<bool> {
    use mail_auth::hickory_resolver::config::{
        NameServerConfigGroup, ResolverConfig, ResolverOpts,
    };
    use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
    let servers = NameServerConfigGroup::from_ips_clear(&[dns.ip()], dns.port(), true);
    let config = ResolverConfig::from_parts(None, Vec::new(), servers);
    let authenticator =
        MessageAuthenticator::new(config, ResolverOpts::default()).expect("resolver");
    let parsed = AuthenticatedMessage::parse(message).expect("the message parses");
    let outputs = tokio::time::timeout(WAIT, authenticator.verify_dkim(&parsed))
        .await
        .expect("verified in time");
    outputs
        .iter()
        .map(|o| *o.result() == DkimResult::Pass)
        .collect()
}

/// dkimpy's verdict on each DKIM-Signature of `message`, with TXT records from `records`
/// (name -> value) instead of DNS: the independent verifier.
async fn dkimpy(message: &[u8], records: &[(&str, &str)]) -> Vec<bool> {
    let dir = tempfile::tempdir().expect("tempdir");
    let eml = dir.path().join("message.eml");
    std::fs::write(&eml, message).expect("write message");
    let map: serde_json::Map<String, serde_json::Value> = records
        .iter()
        .map(|(name, value)| (name.to_string(), serde_json::Value::from(*value)))
        .collect();
    let json = dir.path().join("records.json");
    std::fs::write(&json, serde_json::Value::Object(map).to_string()).expect("write records");
    let script = r#"
import dkim, json, sys
message = open(sys.argv[1], "rb").read()
records = json.load(open(sys.argv[2]))
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    value = records.get(name.rstrip("."))
    return value.encode() if value else None
def verified(d, i):
    # A broken signature is False or, for some failures (body hash), an exception.
    try:
        return bool(d.verify(idx=i, dnsfunc=dnsfunc))
    except dkim.ValidationError:
        return False
d = dkim.DKIM(message)
count = sum(1 for (k, _) in d.headers if k.lower() == b"dkim-signature")
print(json.dumps([verified(d, i) for i in range(count)]))
"#;
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .args(["-c", script])
            .arg(&eml)
            .arg(&json)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("dkimpy in time")
    .expect("python3 runs (make setup installs dkimpy and PyNaCl)");
    assert!(
        out.status.success(),
        "dkimpy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON list")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_and_ed25519_signatures_verify_independently_and_break_when_altered() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (rsa_file, rsa_txt) = keygen(keys.path(), "x.test", "rsa1", "rsa").await;
    let (ed_file, ed_txt) = keygen(keys.path(), "x.test", "ed1", "ed25519").await;
    let net = Net::unique();
    let sink = Sink::start(net.ip(1)).await;
    let dns = DnsServer::start(
        Zone::new()
            .txt("rsa1._domainkey.x.test", &rsa_txt)
            .txt("ed1._domainkey.x.test", &ed_txt),
    )
    .await;
    let tables = key_tables(&[("x.test", "rsa1", &rsa_file), ("x.test", "ed1", &ed_file)]);
    let relay = RelayProcess::routed_to(&sink, &dns, |c| c.raw(&tables)).await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    c.send_mail(
        "app@x.test",
        &["b@y.test"],
        b"From: App <app@x.test>\r\nTo: b@y.test\r\nSubject: signed\r\n\r\nHello.\r\n.. dot-stuffed line\r\n",
    )
    .await
    .expect("queued");
    let got = sink.wait_for(1, WAIT).await;
    let data = got[0].data.clone();
    let signatures = got[0].message().headers_named("DKIM-Signature").len();
    assert_eq!(signatures, 2, "{}", got[0].text());
    let text = got[0].text();
    assert!(
        text.contains("a=rsa-sha256") && text.contains("a=ed25519-sha256"),
        "{text}"
    );
    assert!(text.contains("d=x.test") && text.contains("s=rsa1") && text.contains("s=ed1"));
    let records = [
        ("rsa1._domainkey.x.test", rsa_txt.as_str()),
        ("ed1._domainkey.x.test", ed_txt.as_str()),
    ];
    assert_eq!(mail_auth(&data, dns.addr()).await, vec![true, true]);
    assert_eq!(dkimpy(&data, &records).await, vec![true, true]);
    // Altered after signing: the body, then a signed header.
    let body_changed = [&data[..], b"appended\r\n"].concat();
    assert_eq!(dkimpy(&body_changed, &records).await, vec![false, false]);
    assert_eq!(
        mail_auth(&body_changed, dns.addr()).await,
        vec![false, false]
    );
    let subject_changed = String::from_utf8_lossy(&data)
        .replace("Subject: signed", "Subject: changed")
        .into_bytes();
    assert_eq!(dkimpy(&subject_changed, &records).await, vec![false, false]);
    assert_eq!(
        mail_auth(&subject_changed, dns.addr()).await,
        vec![false, false]
    );
    relay
        .wait_for_event("received", &[("dkim", "x.test")], WAIT)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_domain_signs_other_senders_and_without_keys_mail_goes_unsigned() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (file, txt) = keygen(keys.path(), "relay.test", "s1", "ed25519").await;
    let net = Net::unique();
    let sink = Sink::start(net.ip(1)).await;
    let dns = DnsServer::start(Zone::new()).await;
    let tables = format!(
        "[dkim]\nfallback_domain = \"relay.test\"\n\n{}",
        key_tables(&[("relay.test", "s1", &file)])
    );
    let relay = RelayProcess::routed_to(&sink, &dns, |c| c.raw(&tables)).await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    c.send_mail(
        "app@other.test",
        &["b@y.test"],
        b"From: app@other.test\r\nSubject: fallback\r\n\r\nbody\r\n",
    )
    .await
    .expect("queued");
    let got = sink.wait_for(1, WAIT).await;
    let text = got[0].text();
    assert!(
        text.contains("d=relay.test") && text.contains("s=s1"),
        "{text}"
    );
    assert_eq!(
        dkimpy(&got[0].data, &[("s1._domainkey.relay.test", &txt)]).await,
        vec![true]
    );

    // No [dkim] at all: nothing is signed.
    let (sink, _dns, relay) = relay_with_sink(|c| c).await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    c.send_mail(
        "app@x.test",
        &["b@y.test"],
        b"From: app@x.test\r\n\r\nbody\r\n",
    )
    .await
    .expect("queued");
    let got = sink.wait_for(1, WAIT).await;
    assert!(got[0].message().headers_named("DKIM-Signature").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_tag_chooses_the_signing_domain_and_signatures_cover_its_header() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (x_file, _) = keygen(keys.path(), "x.test", "s1", "ed25519").await;
    let (brand_file, brand_txt) = keygen(keys.path(), "brand.test", "s1", "ed25519").await;
    let net = Net::unique();
    let sink = Sink::start(net.ip(1)).await;
    let dns = DnsServer::start(Zone::new().txt("s1._domainkey.brand.test", &brand_txt)).await;
    let plugin_dir = tempfile::tempdir().expect("tempdir");
    relay_tests::plugins::install("content-policy", plugin_dir.path(), "content-policy");
    // content-policy turns the X-Sign-As header into the dkim_domain tag and adds a header of
    // its own, which brand.test's key signs: the signature can only verify if it was made
    // after on_data.
    let extra = format!(
        "[plugins.content-policy]\nadd_header = \"X-Content-Policy: checked\"\n\
         tag_header = \"X-Sign-As\"\ntag_key = \"dkim_domain\"\n\n{}\
         [[dkim.key]]\ndomain = \"brand.test\"\nselector = \"s1\"\nkey_file = {}\n\
         headers = [\"From\", \"Subject\", \"X-Content-Policy\"]\n",
        key_tables(&[("x.test", "s1", &x_file)]),
        relay_tests::config::toml_str(&brand_file),
    );
    let relay = RelayProcess::routed_to(&sink, &dns, |c| {
        c.plugins_dir(plugin_dir.path()).raw(&extra)
    })
    .await;
    relay
        .wait_for_event("plugin_loaded", &[("plugin", "content-policy")], WAIT)
        .await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    c.send_mail(
        "app@x.test",
        &["b@y.test"],
        b"From: app@x.test\r\nX-Sign-As: brand.test\r\nDate: Mon, 23 Nov 2026 13:45:00 +0000\r\n\
          Subject: tagged\r\n\r\nbody\r\n",
    )
    .await
    .expect("queued");
    let got = sink.wait_for(1, WAIT).await;
    let text = got[0].text();
    assert!(text.contains("d=brand.test"), "{text}");
    assert!(
        !text.contains("d=x.test"),
        "only the tagged domain signs: {text}"
    );
    assert!(text.contains("X-Content-Policy: checked"), "{text}");
    assert_eq!(mail_auth(&got[0].data, dns.addr()).await, vec![true]);
    let signature = got[0]
        .message()
        .header("DKIM-Signature")
        .expect("signed")
        .to_ascii_lowercase()
        .replace([' ', '\t', '\r', '\n'], "");
    assert!(
        signature.contains("x-content-policy"),
        "the plugin's header is signed: {signature}"
    );
    let altered = text
        .replace("X-Content-Policy: checked", "X-Content-Policy: skipped")
        .into_bytes();
    assert_eq!(mail_auth(&altered, dns.addr()).await, vec![false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_own_bounce_reports_are_signed_too() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (file, txt) = keygen(keys.path(), "relay.test", "s1", "ed25519").await;
    let net = Net::unique();
    let sink = Sink::builder()
        .rcpt_policy(|rcpt, _| {
            (rcpt == "nobody@y.test").then(|| (550, "5.1.1 no such user".to_string()))
        })
        .start(net.ip(1))
        .await;
    let dns = DnsServer::start(Zone::new().txt("s1._domainkey.relay.test", &txt)).await;
    let tables = key_tables(&[("relay.test", "s1", &file)]);
    let relay = RelayProcess::routed_to(&sink, &dns, |c| c.raw(&tables)).await;
    let mut c = SmtpClient::connect(relay.addr()).await.expect("connect");
    // From a domain without keys: the message goes out unsigned, its bounce signed.
    c.send_mail(
        "app@x.test",
        &["nobody@y.test"],
        b"From: app@x.test\r\nSubject: to nobody\r\n\r\nbody\r\n",
    )
    .await
    .expect("queued");
    let got = sink.wait_for(1, WAIT).await;
    let dsn = got
        .iter()
        .find(|t| t.mail_from.is_empty())
        .expect("a bounce report");
    assert_eq!(dsn.rcpts, vec!["app@x.test".to_string()]);
    let text = dsn.text();
    assert!(text.contains("d=relay.test"), "{text}");
    assert_eq!(mail_auth(&dsn.data, dns.addr()).await, vec![true]);
}
