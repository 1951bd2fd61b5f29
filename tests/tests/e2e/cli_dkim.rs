//! `relay dkim keygen|check`: key files and DNS records through the real binary, with the
//! records served by the test DNS server.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use relay_tests::relay::relay_binary;
use relay_tests::{DnsServer, Zone};

/// What one `relay dkim ...` run printed.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `relay dkim ARGS...` in `dir`.
async fn relay_dkim(args: &[&str], dir: &Path) -> Run {
    let bin = relay_binary();
    let child = tokio::process::Command::new(&bin)
        .arg("dkim")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("relay dkim {args:?} did not finish"))
        .unwrap_or_else(|e| panic!("relay dkim {args:?} did not run: {e}"));
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `relay dkim keygen` for `selector._domainkey.example.test` into `file`; the TXT value it
/// printed.
async fn keygen(dir: &Path, selector: &str, algo: &str, file: &str) -> String {
    let run = relay_dkim(
        &[
            "keygen",
            "--domain",
            "example.test",
            "--selector",
            selector,
            "--algo",
            algo,
            "--out",
            file,
        ],
        dir,
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    txt_value(&run.stdout)
}

/// The plain record value in keygen's output: the line that starts with `v=DKIM1`.
fn txt_value(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with("v=DKIM1"))
        .unwrap_or_else(|| panic!("no record value in {stdout}"))
        .to_string()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("stat key file")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_writes_a_private_key_file_and_prints_the_record_for_rsa_and_ed25519() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (algo, selector, k) in [("rsa", "s1", "rsa"), ("ed25519", "ed1", "ed25519")] {
        let run = relay_dkim(
            &[
                "keygen",
                "--domain",
                "example.test",
                "--selector",
                selector,
                "--algo",
                algo,
            ],
            dir.path(),
        )
        .await;
        assert_eq!(run.code, Some(0), "{run:?}");
        // The default file name, in the working directory.
        let file = dir.path().join(format!("example.test.{selector}.key"));
        assert_eq!(mode(&file), 0o600, "{}", file.display());
        let pem = std::fs::read_to_string(&file).expect("read key");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        let zone_line =
            format!("{selector}._domainkey.example.test. IN TXT ( \"v=DKIM1; k={k}; \" \"p=");
        assert!(run.stdout.contains(&zone_line), "{}", run.stdout);
        let value = txt_value(&run.stdout);
        assert!(value.starts_with(&format!("v=DKIM1; k={k}; p=")), "{value}");
        // Each quoted string of the zone-file line fits a DNS character-string.
        let line = run
            .stdout
            .lines()
            .find(|l| l.contains(" IN TXT "))
            .expect("zone line");
        let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        assert!(strings.iter().all(|s| s.len() <= 255), "{line}");
        assert_eq!(strings.concat(), value);
        assert!(run.stdout.contains("[[dkim.key]]"), "{}", run.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_refuses_to_overwrite_a_key_unless_forced() {
    let dir = tempfile::tempdir().expect("temp dir");
    keygen(dir.path(), "s1", "ed25519", "k.key").await;
    let file = dir.path().join("k.key");
    let before = std::fs::read(&file).expect("read key");

    let again = relay_dkim(
        &[
            "keygen",
            "--domain",
            "example.test",
            "--selector",
            "s1",
            "--algo",
            "ed25519",
            "--out",
            "k.key",
        ],
        dir.path(),
    )
    .await;
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(again.stderr.contains("already exists"), "{again:?}");
    assert!(again.stderr.contains("--force"), "{again:?}");
    assert_eq!(
        std::fs::read(&file).expect("read key"),
        before,
        "the key is untouched"
    );

    let forced = relay_dkim(
        &[
            "keygen",
            "--domain",
            "example.test",
            "--selector",
            "s1",
            "--algo",
            "ed25519",
            "--out",
            "k.key",
            "--force",
        ],
        dir.path(),
    )
    .await;
    assert_eq!(forced.code, Some(0), "{forced:?}");
    assert_ne!(std::fs::read(&file).expect("read key"), before, "a new key");
    assert_eq!(mode(&file), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_a_match_for_the_published_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The RSA record is longer than 255 bytes: served as two strings, joined by the lookup.
    let rsa = keygen(dir.path(), "s1", "rsa", "rsa.key").await;
    let ed = keygen(dir.path(), "ed1", "ed25519", "ed.key").await;
    let dns = DnsServer::start(
        Zone::new()
            .txt("s1._domainkey.example.test", &rsa)
            .txt("ed1._domainkey.example.test", &ed),
    )
    .await;
    let server = dns.addr().to_string();
    for (selector, file) in [("s1", "rsa.key"), ("ed1", "ed.key")] {
        let run = relay_dkim(
            &[
                "check",
                "--domain",
                "example.test",
                "--selector",
                selector,
                "--key",
                file,
                "--nameserver",
                &server,
            ],
            dir.path(),
        )
        .await;
        assert_eq!(run.code, Some(0), "{run:?}");
        assert!(
            run.stdout
                .starts_with(&format!("{selector}._domainkey.example.test: ok")),
            "{run:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_a_mismatch_for_another_keys_record_and_for_a_missing_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ours = keygen(dir.path(), "s1", "ed25519", "ours.key").await;
    let theirs = keygen(dir.path(), "s1", "ed25519", "theirs.key").await;
    let dns = DnsServer::start(Zone::new().txt("s1._domainkey.example.test", &theirs)).await;
    let server = dns.addr().to_string();
    let check = |selector: &'static str| {
        let server = server.clone();
        let dir = dir.path().to_path_buf();
        async move {
            relay_dkim(
                &[
                    "check",
                    "--domain",
                    "example.test",
                    "--selector",
                    selector,
                    "--key",
                    "ours.key",
                    "--nameserver",
                    &server,
                ],
                &dir,
            )
            .await
        }
    };

    let other = check("s1").await;
    assert_eq!(other.code, Some(1), "{other:?}");
    assert!(other.stdout.contains("different key"), "{other:?}");
    assert!(
        other.stdout.contains(&format!("publish: {ours}")),
        "says what to publish: {other:?}"
    );

    let missing = check("s2").await;
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(
        missing.stdout.contains("s2._domainkey.example.test")
            && missing.stdout.contains("no record"),
        "{missing:?}"
    );
    assert_eq!(
        dns.query_count("s2._domainkey.example.test", relay_tests::RecordType::TXT),
        1,
        "asked the test server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_with_a_config_uses_its_dkim_keys_and_name_servers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rsa = keygen(dir.path(), "s1", "rsa", "rsa.key").await;
    keygen(dir.path(), "ed1", "ed25519", "ed.key").await;
    // Only s1 is published: checking the domain checks both keys and fails on ed1.
    let dns = DnsServer::start(Zone::new().txt("s1._domainkey.example.test", &rsa)).await;
    let config = format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n\n\
         [[dkim.key]]\ndomain = \"example.test\"\nselector = \"s1\"\nkey_file = \"rsa.key\"\n\n\
         [[dkim.key]]\ndomain = \"example.test\"\nselector = \"ed1\"\nkey_file = \"ed.key\"\n\n\
         [[dkim.key]]\ndomain = \"other.test\"\nselector = \"s1\"\nkey_file = \"missing.key\"\n",
        dns.addr()
    );
    std::fs::write(dir.path().join("relay.toml"), config).expect("write config");

    let both = relay_dkim(
        &[
            "check",
            "--domain",
            "example.test",
            "--config",
            "relay.toml",
        ],
        dir.path(),
    )
    .await;
    assert_eq!(both.code, Some(1), "{both:?}");
    assert!(
        both.stdout.contains("s1._domainkey.example.test: ok"),
        "{both:?}"
    );
    assert!(
        both.stdout.contains("ed1._domainkey.example.test: FAIL"),
        "{both:?}"
    );

    let one = relay_dkim(
        &[
            "check",
            "--domain",
            "example.test",
            "--selector",
            "s1",
            "--config",
            "relay.toml",
        ],
        dir.path(),
    )
    .await;
    assert_eq!(one.code, Some(0), "{one:?}");

    let none = relay_dkim(
        &["check", "--domain", "nokeys.test", "--config", "relay.toml"],
        dir.path(),
    )
    .await;
    assert_eq!(none.code, Some(2), "{none:?}");
    assert!(
        none.stderr
            .contains("no [[dkim.key]] for domain nokeys.test"),
        "{none:?}"
    );
}
