//! `relay sink`: a catch-all SMTP server that stores every message it receives as files
//! (like Postfix's smtp-sink or MailHog), and answers chosen recipients with 4xx/5xx.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::smtp::listener::{drive, Handler, Timeouts};
use crate::smtp::{
    ClientInfo, EnhancedCode, IncomingMessage, MailRequest, RcptRequest, Reply, Resolution,
    Session, SessionConfig,
};

/// A `--fail` rule: recipients matching `pattern` get `reply` at RCPT TO.
#[derive(Debug, Clone)]
pub struct FailRule {
    /// `user@domain`, `*@domain` or `*`, compared case-insensitively.
    pub pattern: String,
    /// The reply to give.
    pub reply: Reply,
}

impl FailRule {
    /// Parses `ADDRESS=CODE [X.Y.Z] TEXT`, e.g. `bad@example.test=550 5.1.1 no such user`.
    pub fn parse(text: &str) -> Result<FailRule, String> {
        let (pattern, reply) = text
            .split_once('=')
            .ok_or_else(|| format!("--fail \"{text}\": expected ADDRESS=CODE TEXT, e.g. \"bad@example.test=550 5.1.1 no such user\""))?;
        let mut words = reply.trim().splitn(2, ' ');
        let code: u16 = words
            .next()
            .and_then(|c| c.parse().ok())
            .filter(|c| (400..600).contains(c))
            .ok_or_else(|| {
                format!("--fail \"{text}\": the reply must start with a 4xx or 5xx code")
            })?;
        let rest = words.next().unwrap_or("").trim();
        let (enhanced, text_part) = match rest.split_once(' ').unwrap_or((rest, "")) {
            (first, tail) if parse_enhanced(first).is_some() => (parse_enhanced(first), tail),
            _ => (None, rest),
        };
        let enhanced = enhanced.or(Some(EnhancedCode((code / 100) as u8, 0, 0)));
        let text_part = if text_part.is_empty() {
            "Rejected by sink rule"
        } else {
            text_part
        };
        Ok(FailRule {
            pattern: pattern.trim().to_lowercase(),
            reply: Reply::new(code, enhanced, text_part),
        })
    }

    fn matches(&self, rcpt: &str) -> bool {
        let rcpt = rcpt.to_lowercase();
        if self.pattern == "*" {
            return true;
        }
        match self.pattern.strip_prefix("*@") {
            Some(domain) => rcpt.rsplit_once('@').is_some_and(|(_, d)| d == domain),
            None => rcpt == self.pattern,
        }
    }
}

fn parse_enhanced(text: &str) -> Option<EnhancedCode> {
    let mut parts = text.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    (parts.next().is_none() && matches!(class, 2 | 4 | 5))
        .then_some(EnhancedCode(class, subject, detail))
}

/// Settings of a running sink.
pub struct SinkOptions {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where to store messages (created if missing).
    pub dir: PathBuf,
    /// Recipients to refuse.
    pub fail: Vec<FailRule>,
    /// Name in the greeting.
    pub hostname: String,
}

/// Runs the sink until the process ends.
pub async fn run(options: SinkOptions) -> std::io::Result<()> {
    std::fs::create_dir_all(&options.dir)?;
    let listener = TcpListener::bind(options.listen).await?;
    tracing::info!(event = "listening", addr = %listener.local_addr()?, dir = %options.dir.display(), "sink accepting SMTP");
    let config = Arc::new(SessionConfig {
        hostname: options.hostname.clone(),
        ..SessionConfig::default()
    });
    let shared = Arc::new(options);
    let counter = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(err) => {
                tracing::warn!(event = "accept_failed", error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let session = Session::new(Arc::clone(&config), ClientInfo::new(peer.ip(), true));
        let mut handler = SinkHandler {
            options: Arc::clone(&shared),
            counter: Arc::clone(&counter),
            helo: String::new(),
        };
        tokio::spawn(async move {
            let timeouts = Timeouts {
                command: Duration::from_secs(300),
                data: Duration::from_secs(600),
            };
            let _ = drive(stream, peer, session, &mut handler, timeouts, None).await;
        });
    }
}

struct SinkHandler {
    options: Arc<SinkOptions>,
    counter: Arc<AtomicU64>,
    helo: String,
}

impl Handler for SinkHandler {
    async fn check_mail(&mut self, _request: &MailRequest, _helo: &str) -> Resolution {
        Resolution::Accept
    }

    async fn check_rcpt(&mut self, request: &RcptRequest, _helo: &str) -> Resolution {
        let rcpt = request.to.to_string();
        match self.options.fail.iter().find(|rule| rule.matches(&rcpt)) {
            Some(rule) => {
                tracing::info!(event = "sink_refused", rcpt = %rcpt, reply = %rule.reply.text(), "recipient refused by rule");
                Resolution::Reject(rule.reply.clone())
            }
            None => Resolution::Accept,
        }
    }

    async fn message(&mut self, message: IncomingMessage, peer: SocketAddr) -> Resolution {
        self.helo.clone_from(&message.helo);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let id = format!("{stamp}-{n}");
        let envelope = serde_json::json!({
            "mail_from": message.mail_from.to_string(),
            "rcpt_to": message.recipients.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            "peer": peer.to_string(),
            "helo": message.helo,
            "size": message.body.len(),
        });
        let dir = self.options.dir.clone();
        let body = message.body;
        let file_id = id.clone();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            // Write under a temporary name and rename, so readers never see half a message.
            let eml = dir.join(format!("{file_id}.eml"));
            let tmp = dir.join(format!(".{file_id}.tmp"));
            std::fs::write(&tmp, &body)?;
            std::fs::write(dir.join(format!("{file_id}.json")), envelope.to_string())?;
            std::fs::rename(tmp, eml)
        })
        .await;
        match written {
            Ok(Ok(())) => {
                tracing::info!(event = "sink_received", id = %id, from = %message.mail_from, rcpts = message.recipients.len(), client = %peer.ip(), "message stored");
                Resolution::Queued(id)
            }
            Ok(Err(err)) => {
                tracing::error!(event = "sink_write_failed", error = %err, "could not store message");
                Resolution::Reject(Reply::new(
                    451,
                    Some(EnhancedCode(4, 3, 0)),
                    "Could not store message",
                ))
            }
            Err(err) => {
                tracing::error!(event = "sink_write_failed", error = %err, "could not store message");
                Resolution::Reject(Reply::new(
                    451,
                    Some(EnhancedCode(4, 3, 0)),
                    "Could not store message",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_rule_parses_code_enhanced_code_and_text() {
        let rule = FailRule::parse("Bad@X.test=550 5.1.1 no such user").expect("valid");
        assert_eq!(rule.pattern, "bad@x.test");
        assert_eq!(rule.reply.code, 550);
        assert_eq!(rule.reply.enhanced, Some(EnhancedCode(5, 1, 1)));
        assert_eq!(rule.reply.lines, vec!["no such user".to_string()]);
        assert!(rule.matches("bad@x.test"));
        assert!(!rule.matches("good@x.test"));
    }

    #[test]
    fn fail_rule_without_enhanced_code_gets_a_generic_one() {
        let rule = FailRule::parse("*@slow.test=451 try later").expect("valid");
        assert_eq!(rule.reply.enhanced, Some(EnhancedCode(4, 0, 0)));
        assert!(rule.matches("anyone@SLOW.test"));
        assert!(!rule.matches("anyone@fast.test"));
    }

    #[test]
    fn fail_rule_rejects_malformed_input_with_an_example() {
        for bad in ["no-equals", "a@b=250 ok", "a@b=abc", "a@b="] {
            let err = FailRule::parse(bad).expect_err(bad);
            assert!(err.contains("--fail"), "{err}");
        }
    }
}
