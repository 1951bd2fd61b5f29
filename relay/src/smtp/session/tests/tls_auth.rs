//! STARTTLS (RFC 3207) and AUTH (RFC 4954) in the session state machine.

use super::*;

/// base64 of `text`, as a client would send it.
fn b64(text: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A client of a listener that offers STARTTLS and AUTH over TLS, from outside
/// `relay_networks`.
fn outsider() -> Client {
    let mut client = ClientInfo::new("192.0.2.9".parse().unwrap(), false);
    client.starttls = true;
    client.auth = AuthOffer::WithTls;
    Client::with_client(config(), client)
}

/// [`outsider`] after EHLO, STARTTLS and EHLO again.
fn outsider_over_tls() -> Client {
    let mut c = outsider();
    c.send("EHLO app.test\r\n");
    let reply = c.send("STARTTLS\r\n");
    assert!(reply.starts_with("220 2.0.0"), "{reply}");
    c.send("EHLO app.test\r\n");
    c
}

#[test]
fn starttls_is_offered_in_the_clear_and_auth_only_over_tls() {
    let mut c = outsider();
    let ehlo = c.send("EHLO app.test\r\n");
    assert!(
        ehlo.contains("250-STARTTLS\r\n") || ehlo.contains("250 STARTTLS\r\n"),
        "{ehlo}"
    );
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    c.send("STARTTLS\r\n");
    assert_eq!(c.handshakes, 1);
    let ehlo = c.send("EHLO app.test\r\n");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    let again = c.send("STARTTLS\r\n");
    assert!(again.starts_with("503 5.5.1"), "{again}");
}

#[test]
fn commands_pipelined_behind_starttls_are_discarded_and_the_session_starts_over() {
    let mut c = outsider();
    c.send("EHLO app.test\r\n");
    // An attacker appends plaintext commands behind the client's STARTTLS (CVE-2011-0411).
    let reply = c.send("STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<x@y.test>\r\n");
    assert_eq!(
        codes(&reply),
        vec!["220 2.0.0"],
        "only STARTTLS is answered"
    );
    assert_eq!(c.handshakes, 1);
    assert!(
        c.mails.is_empty(),
        "the injected MAIL never reached the I/O layer"
    );
    assert!(!c.closed);
    // The EHLO from before the handshake is forgotten (RFC 3207 4.2).
    let reply = c.send("MAIL FROM:<a@example.com>\r\n");
    assert!(reply.starts_with("503 5.5.1"), "{reply}");
}

#[test]
fn starttls_where_it_is_not_offered_is_refused() {
    let mut c = Client::ehlo();
    let ehlo = c.send("EHLO client.test\r\n");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    let reply = c.send("STARTTLS\r\n");
    assert!(reply.starts_with("502 5.5.1"), "{reply}");
    assert_eq!(c.handshakes, 0);
}

#[test]
fn starttls_needs_ehlo_first_and_no_open_transaction() {
    let mut c = outsider();
    assert!(c.send("STARTTLS\r\n").starts_with("503 5.5.1"));
    let mut c = outsider();
    c.session.client.relay_allowed = true;
    c.send("EHLO app.test\r\n");
    c.send("MAIL FROM:<a@example.com>\r\n");
    assert!(c.send("STARTTLS\r\n").starts_with("503 5.5.1"));
    assert_eq!(c.handshakes, 0);
}

#[test]
fn auth_in_the_clear_is_refused_with_538() {
    let mut c = outsider();
    c.send("EHLO app.test\r\n");
    let reply = c.send(format!("AUTH PLAIN {}\r\n", b64(b"\0app\0secret")));
    assert!(reply.starts_with("538 5.7.11"), "{reply}");
    assert!(c.logins.is_empty(), "the password was never checked");
}

#[test]
fn auth_plain_with_initial_response_logs_in_and_allows_relaying() {
    let mut c = outsider_over_tls();
    // Without a login an outsider cannot relay.
    c.send("MAIL FROM:<a@example.com>\r\n");
    let reply = c.send("RCPT TO:<b@example.net>\r\n");
    assert!(reply.starts_with("554 5.7.1"), "{reply}");
    c.send("RSET\r\n");

    let reply = c.send(format!(
        "AUTH PLAIN {}\r\n",
        b64(b"\0app@example.com\0s3cret")
    ));
    assert!(reply.starts_with("235 2.7.0"), "{reply}");
    assert_eq!(c.logins.len(), 1);
    assert_eq!(c.logins[0].user, "app@example.com");
    assert_eq!(c.logins[0].password, b"s3cret");
    assert_eq!(c.logins[0].mechanism, "PLAIN");
    assert_eq!(c.session.auth_user(), Some("app@example.com"));

    c.send("MAIL FROM:<a@example.com>\r\n");
    assert!(c
        .send("RCPT TO:<b@example.net>\r\n")
        .starts_with("250 2.1.5"));
    // The I/O layer learns the login and TLS with each recipient, for on_rcpt.
    let rcpt = c.rcpts.last().expect("a recipient was checked");
    assert_eq!(
        (rcpt.auth_user.as_deref(), rcpt.tls),
        (Some("app@example.com"), true)
    );
    c.send("DATA\r\n");
    c.send("Subject: x\r\n\r\nbody\r\n.\r\n");
    let message = &c.messages[0];
    assert_eq!(message.auth_user.as_deref(), Some("app@example.com"));
    assert_eq!(message.protocol, "ESMTPSA");
    assert!(message
        .tls
        .as_deref()
        .is_some_and(|t| t.starts_with("TLSv1.3")));
}

#[test]
fn auth_plain_may_be_pipelined_with_the_transaction() {
    let mut c = outsider_over_tls();
    let replies = c.send(format!(
        "AUTH PLAIN {}\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n",
        b64(b"\0app\0pw")
    ));
    assert_eq!(
        codes(&replies),
        vec!["235 2.7.0", "250 2.1.0", "250 2.1.5", "354"]
    );
}

#[test]
fn auth_plain_without_initial_response_and_auth_login_take_challenges() {
    let mut c = outsider_over_tls();
    assert_eq!(c.send("AUTH PLAIN\r\n"), "334 \r\n");
    let reply = c.send(format!("{}\r\n", b64(b"app\0app\0pw")));
    assert!(reply.starts_with("235"), "{reply}");
    assert_eq!(c.logins[0].user, "app");

    let mut c = outsider_over_tls();
    assert_eq!(c.send("AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(
        c.send(format!("{}\r\n", b64(b"app"))),
        "334 UGFzc3dvcmQ6\r\n"
    );
    let reply = c.send(format!("{}\r\n", b64(b"pw")));
    assert!(reply.starts_with("235"), "{reply}");
    assert_eq!(
        (
            c.logins[0].mechanism,
            c.logins[0].user.as_str(),
            c.logins[0].password.as_slice()
        ),
        ("LOGIN", "app", &b"pw"[..])
    );

    // AUTH LOGIN with the user name as initial response.
    let mut c = outsider_over_tls();
    let reply = c.send(format!("AUTH LOGIN {}\r\n", b64(b"app")));
    assert_eq!(reply, "334 UGFzc3dvcmQ6\r\n");
}

#[test]
fn bad_responses_cancel_and_unknown_mechanisms_are_refused() {
    let mut c = outsider_over_tls();
    c.send("AUTH LOGIN\r\n");
    let reply = c.send("*\r\n");
    assert!(reply.starts_with("501 5.0.0"), "{reply}");
    let reply = c.send("AUTH PLAIN %%%notbase64\r\n");
    assert!(reply.starts_with("501 5.5.2"), "{reply}");
    // Acting for another user (an authorization identity) is not allowed.
    let reply = c.send(format!("AUTH PLAIN {}\r\n", b64(b"admin\0app\0pw")));
    assert!(reply.starts_with("501 5.5.2"), "{reply}");
    let reply = c.send("AUTH CRAM-MD5\r\n");
    assert!(reply.starts_with("504 5.5.4"), "{reply}");
    assert!(c.logins.is_empty());
    // After all that, a proper login still works and the session goes on.
    let reply = c.send(format!("AUTH PLAIN {}\r\n", b64(b"\0app\0pw")));
    assert!(reply.starts_with("235"), "{reply}");
}

#[test]
fn a_wrong_password_gets_535_and_a_second_auth_after_success_503() {
    let mut c = outsider_over_tls();
    c.login_answer = Resolution::Reject(Reply::enhanced(
        535,
        (5, 7, 8),
        "Authentication credentials invalid",
    ));
    let reply = c.send(format!("AUTH PLAIN {}\r\n", b64(b"\0app\0wrong")));
    assert!(reply.starts_with("535 5.7.8"), "{reply}");
    assert_eq!(c.session.auth_user(), None);
    c.login_answer = Resolution::Accept;
    assert!(c
        .send(format!("AUTH PLAIN {}\r\n", b64(b"\0app\0pw")))
        .starts_with("235"));
    let reply = c.send(format!("AUTH PLAIN {}\r\n", b64(b"\0app\0pw")));
    assert!(reply.starts_with("503 5.5.1"), "{reply}");
}

#[test]
fn a_421_answer_to_a_login_ends_the_session() {
    let mut c = outsider_over_tls();
    c.login_answer = Resolution::Reject(Reply::enhanced(421, (4, 7, 0), "Too many failed logins"));
    let reply = c.send(format!("AUTH PLAIN {}\r\n", b64(b"\0app\0pw")));
    assert!(reply.starts_with("421 4.7.0"), "{reply}");
    assert!(c.closed);
}

#[test]
fn listeners_can_require_a_login_or_tls_before_mail() {
    let mut client = ClientInfo::new("127.0.0.1".parse().unwrap(), true);
    client.starttls = true;
    client.auth = AuthOffer::WithTls;
    client.require_auth = true;
    client.require_tls = true;
    let mut c = Client::with_client(config(), client);
    c.send("EHLO app.test\r\n");
    let reply = c.send("MAIL FROM:<a@example.com>\r\n");
    assert!(
        reply.starts_with("530 5.7.0 Must issue a STARTTLS"),
        "{reply}"
    );
    c.send("STARTTLS\r\n");
    c.send("EHLO app.test\r\n");
    // In relay_networks, but this listener wants a login regardless of the address.
    let reply = c.send("MAIL FROM:<a@example.com>\r\n");
    assert!(
        reply.starts_with("530 5.7.0 Authentication required"),
        "{reply}"
    );
    c.send(format!("AUTH PLAIN {}\r\n", b64(b"\0app\0pw")));
    assert!(c
        .send("MAIL FROM:<a@example.com>\r\n")
        .starts_with("250 2.1.0"));
}

#[test]
fn auth_in_the_clear_where_the_listener_allows_it_and_the_auth_mail_parameter() {
    let mut client = ClientInfo::new("127.0.0.1".parse().unwrap(), false);
    client.auth = AuthOffer::Always;
    let mut c = Client::with_client(config(), client);
    let ehlo = c.send("EHLO app.test\r\n");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(c
        .send(format!("AUTH PLAIN {}\r\n", b64(b"\0app\0pw")))
        .starts_with("235"));
    // RFC 4954 5: AUTH=<> on MAIL FROM is accepted where AUTH is offered.
    let reply = c.send("MAIL FROM:<a@example.com> AUTH=<>\r\n");
    assert!(reply.starts_with("250"), "{reply}");
    c.send("RCPT TO:<b@example.net>\r\n");
    c.send("DATA\r\n");
    c.send("Subject: x\r\n\r\nbody\r\n.\r\n");
    assert_eq!(c.messages[0].protocol, "ESMTPA");

    // Where AUTH is not offered, the parameter is not either.
    let mut c = Client::ehlo();
    let reply = c.send("MAIL FROM:<a@example.com> AUTH=<>\r\n");
    assert!(reply.starts_with("555 5.5.4"), "{reply}");
}

#[test]
fn auth_needs_ehlo_and_no_open_transaction() {
    let mut client = ClientInfo::new("127.0.0.1".parse().unwrap(), true);
    client.auth = AuthOffer::Always;
    let mut c = Client::with_client(config(), client);
    assert!(c.send("AUTH LOGIN\r\n").starts_with("503 5.5.1"));
    c.send("EHLO app.test\r\n");
    c.send("MAIL FROM:<a@example.com>\r\n");
    assert!(c.send("AUTH LOGIN\r\n").starts_with("503 5.5.1"));
    assert!(c.logins.is_empty());
}

#[test]
fn auth_where_no_users_are_configured_is_not_available() {
    let mut c = Client::ehlo();
    let reply = c.send(format!("AUTH PLAIN {}\r\n", b64(b"\0app\0pw")));
    assert!(reply.starts_with("502 5.5.1"), "{reply}");
}

#[test]
fn the_auth_request_never_shows_the_password_in_debug_output() {
    let request = AuthRequest {
        mechanism: "PLAIN",
        user: "app".into(),
        password: b"hunter2".to_vec(),
        tls: true,
    };
    let shown = format!("{request:?}");
    assert!(
        shown.contains("app") && !shown.contains("hunter2"),
        "{shown}"
    );
}
