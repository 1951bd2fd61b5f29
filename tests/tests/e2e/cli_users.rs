//! `relay user add|remove|list`: the SMTP AUTH users file edited through the real binary.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use relay_tests::relay::relay_binary;

/// What one `relay user ...` run printed.
#[derive(Debug)]
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `relay user ARGS...` with `stdin` as its standard input.
fn relay_user(args: &[&str], stdin: &str) -> Run {
    let bin = relay_binary();
    let mut child = Command::new(&bin)
        .arg("user")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    if let Some(mut input) = child.stdin.take() {
        // The command may exit before reading (a usage error): a broken pipe is fine.
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("relay user {args:?} did not run: {e}"));
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn add(file: &Path, name: &str, password: &str) -> Run {
    let path = file.to_str().expect("utf-8 temp path");
    relay_user(&["add", name, "--file", path, "--password-stdin"], password)
}

fn list(file: &Path) -> Vec<String> {
    let run = relay_user(&["list", "--file", file.to_str().expect("path")], "");
    assert!(run.ok, "list failed: {run:?}");
    run.stdout.lines().map(str::to_string).collect()
}

/// The hash written for `name`.
fn hash_of(file: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(file).expect("read users file");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no line for {name} in {text}"))
        .to_string()
}

fn verifies(hash: &str, password: &str) -> bool {
    let parsed = PasswordHash::new(hash).expect("a PHC string");
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

#[test]
fn relay_user_adds_lists_replaces_and_removes_users() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("users");

    let first = add(&file, "alice", "correct horse\n");
    assert!(first.ok, "{first:?}");
    assert!(first.stdout.contains("created"), "{first:?}");
    let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "a new users file is private");

    let second = add(&file, "app@example.com", "s3cret\r\nignored second line\n");
    assert!(second.ok, "{second:?}");
    assert_eq!(list(&file), vec!["alice", "app@example.com"]);

    let alice = hash_of(&file, "alice");
    assert!(
        alice.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{alice}"
    );
    assert!(
        verifies(&alice, "correct horse"),
        "the trailing LF is not part of it"
    );
    assert!(
        verifies(&hash_of(&file, "app@example.com"), "s3cret"),
        "CR LF stripped, only the first line read"
    );

    let replaced = add(&file, "alice", "battery staple");
    assert!(replaced.ok, "{replaced:?}");
    assert!(
        replaced.stdout.contains("replaced") && replaced.stdout.contains("alice"),
        "replacing says so: {replaced:?}"
    );
    let alice = hash_of(&file, "alice");
    assert!(verifies(&alice, "battery staple"));
    assert!(!verifies(&alice, "correct horse"));
    assert_eq!(list(&file), vec!["alice", "app@example.com"], "order kept");

    let removed = relay_user(
        &[
            "remove",
            "app@example.com",
            "--file",
            file.to_str().expect("path"),
        ],
        "",
    );
    assert!(removed.ok, "{removed:?}");
    assert_eq!(list(&file), vec!["alice"]);

    let unknown = relay_user(
        &["remove", "bob", "--file", file.to_str().expect("path")],
        "",
    );
    assert!(!unknown.ok, "removing an unknown user fails: {unknown:?}");
    assert!(
        unknown.stderr.contains("bob") && unknown.stderr.contains(&file.display().to_string()),
        "the message names the user and the file: {unknown:?}"
    );
}

#[test]
fn relay_user_keeps_comments_when_editing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("users");
    std::fs::write(&file, "# SMTP AUTH users\n\n# the billing app\n").expect("write");
    assert!(add(&file, "billing", "pw1").ok);
    assert!(add(&file, "alerts", "pw2").ok);
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(
        text.starts_with("# SMTP AUTH users\n\n# the billing app\nbilling:$argon2id$"),
        "{text}"
    );
    let removed = relay_user(
        &["remove", "billing", "--file", file.to_str().expect("path")],
        "",
    );
    assert!(removed.ok, "{removed:?}");
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(
        text.starts_with("# SMTP AUTH users\n\n# the billing app\nalerts:$argon2id$"),
        "{text}"
    );
}

#[test]
fn relay_user_finds_the_users_file_through_the_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("relay.toml");
    let users = dir.path().join("users");
    std::fs::write(
        &config,
        format!("[auth]\nusers_file = {:?}\n", users.display().to_string()),
    )
    .expect("write config");
    let config_arg = config.to_str().expect("path");

    let run = relay_user(
        &["add", "alice", "--config", config_arg, "--password-stdin"],
        "pw\n",
    );
    assert!(run.ok, "{run:?}");
    assert!(
        users.exists(),
        "the users_file the config names was written"
    );
    let run = relay_user(&["list", "--config", config_arg], "");
    assert_eq!((run.ok, run.stdout.as_str()), (true, "alice\n"), "{run:?}");

    std::fs::write(&config, "[server]\nhostname = \"mx.test\"\n").expect("write config");
    let run = relay_user(&["list", "--config", config_arg], "");
    assert!(!run.ok, "{run:?}");
    assert!(
        run.stderr.contains(config_arg) && run.stderr.contains("[auth] users_file"),
        "the missing key is named with the config file: {run:?}"
    );
}

#[test]
fn relay_user_names_the_file_and_line_of_a_malformed_users_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("users");
    std::fs::write(&file, "# users\nalice:$argon2id$v=19$oops\nbob:plaintext\n").expect("write");
    for run in [
        relay_user(&["list", "--file", file.to_str().expect("path")], ""),
        add(&file, "carol", "pw"),
    ] {
        assert!(!run.ok, "{run:?}");
        assert!(
            run.stderr.contains(&format!("{}:2:", file.display())),
            "stderr names file and line: {run:?}"
        );
        assert!(run.stderr.contains("argon2"), "and the reason: {run:?}");
    }
}

#[test]
fn relay_user_add_refuses_an_empty_password_and_a_bad_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("users");
    let empty = add(&file, "alice", "\n");
    assert!(!empty.ok, "{empty:?}");
    assert!(empty.stderr.contains("empty"), "{empty:?}");
    assert!(!file.exists(), "nothing written");

    let spaced = add(&file, "al ice", "pw\n");
    assert!(!spaced.ok, "{spaced:?}");
    assert!(spaced.stderr.contains("whitespace"), "{spaced:?}");
}
