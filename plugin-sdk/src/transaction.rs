//! The SMTP transaction `on_rcpt` and `on_data` read ([`Transaction`]), and `on_rcpt`'s input
//! ([`RcptInput`]).
//!
//! In the relay a [`Transaction`] is a handle: the session, MAIL FROM and the recipients are
//! copied into the plugin only when it asks, each at most once per hook call (the answer is
//! kept in the [`Transaction`]). A plugin that decides on the recipient alone never pays for
//! them. In native tests a [`Transaction`] is plain data ([`TransactionInfo`], built by
//! [`crate::testing::rcpt`], [`crate::testing::data`] and [`crate::testing::transaction`]).

use std::cell::OnceCell;

use crate::bindings::relay::policy::types::{Envelope, Transaction as HostTransaction};
use crate::types::{MailFrom, Session};

/// Everything [`Transaction`] can answer, as plain data: what a native test gives a hook
/// (see [`crate::testing::transaction`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionInfo {
    /// The SMTP session the transaction arrived on.
    pub session: Session,
    /// MAIL FROM and its parameters.
    pub mail_from: MailFrom,
    /// The recipients: in `on_rcpt` those accepted before the one asked about, in `on_data`
    /// all of them.
    pub recipients: Vec<String>,
}

/// The SMTP transaction of one `on_rcpt` or `on_data` call: the session, MAIL FROM and the
/// recipients.
///
/// Each method asks the relay the first time it is called and keeps the answer for the rest
/// of the call, so asking twice crosses into the host once; the session and MAIL FROM come in
/// one call. Read only what the decision needs: not reading them costs nothing, reading them
/// costs a host call and a copy.
#[derive(Clone)]
pub struct Transaction<'a> {
    source: Source<'a>,
    envelope: OnceCell<Envelope>,
    recipients: OnceCell<Vec<String>>,
}

#[derive(Clone)]
enum Source<'a> {
    /// The relay's transaction, for the duration of the call.
    Host(&'a HostTransaction),
    /// A test's transaction.
    Info(TransactionInfo),
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Source::Host(_) => f.write_str("Transaction(relay)"),
            Source::Info(info) => f.debug_tuple("Transaction").field(info).finish(),
        }
    }
}

impl<'a> Transaction<'a> {
    fn with_source(source: Source<'a>) -> Self {
        Transaction {
            source,
            envelope: OnceCell::new(),
            recipients: OnceCell::new(),
        }
    }

    /// The relay's transaction (used by [`crate::export_plugin!`]).
    #[doc(hidden)]
    pub fn from_host(transaction: &'a HostTransaction) -> Self {
        Transaction::with_source(Source::Host(transaction))
    }

    /// The SMTP session the transaction arrived on.
    pub fn session(&self) -> &Session {
        match &self.source {
            Source::Info(info) => &info.session,
            Source::Host(host) => &self.envelope.get_or_init(|| host.envelope()).session,
        }
    }

    /// MAIL FROM and its parameters.
    pub fn mail_from(&self) -> &MailFrom {
        match &self.source {
            Source::Info(info) => &info.mail_from,
            Source::Host(host) => &self.envelope.get_or_init(|| host.envelope()).mail_from,
        }
    }

    /// The recipients: in `on_rcpt` those accepted before the one asked about (as the relay
    /// will queue them, after any rewrite), in `on_data` all of them.
    pub fn recipients(&self) -> &[String] {
        match &self.source {
            Source::Info(info) => &info.recipients,
            Source::Host(host) => self.recipients.get_or_init(|| host.recipients()),
        }
    }

    /// A test's data, to adjust it (the `with_*` builders of [`crate::testing`]); `None` for
    /// the relay's transaction, which is read-only.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn info_mut(&mut self) -> Option<&mut TransactionInfo> {
        match &mut self.source {
            Source::Info(info) => Some(info),
            Source::Host(_) => None,
        }
    }
}

impl From<TransactionInfo> for Transaction<'static> {
    fn from(info: TransactionInfo) -> Self {
        Transaction::with_source(Source::Info(info))
    }
}

/// The input of [`crate::Plugin::on_rcpt`]: one `RCPT TO`, before the relay replies to it.
#[derive(Debug, Clone)]
pub struct RcptInput<'a> {
    /// The recipient address as given.
    pub recipient: String,
    /// Recipients already accepted in this transaction.
    pub accepted_so_far: u32,
    /// The session, MAIL FROM and the recipients accepted so far, read on demand.
    pub transaction: Transaction<'a>,
}

impl RcptInput<'_> {
    /// The SMTP session (a host call the first time: see [`Transaction`]).
    pub fn session(&self) -> &Session {
        self.transaction.session()
    }

    /// MAIL FROM and its parameters (a host call the first time: see [`Transaction`]).
    pub fn mail_from(&self) -> &MailFrom {
        self.transaction.mail_from()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::MailFlags;

    fn info() -> TransactionInfo {
        TransactionInfo {
            session: Session {
                client_ip: "198.51.100.7".into(),
                helo: "mx.x.test".into(),
                tls: true,
                auth_user: Some("alice".into()),
            },
            mail_from: MailFrom {
                address: "a@x.test".into(),
                size: Some(10),
                flags: MailFlags::SMTPUTF8,
            },
            recipients: vec!["b@y.test".into(), "c@y.test".into()],
        }
    }

    #[test]
    fn a_test_transaction_answers_from_its_data() {
        let transaction = Transaction::from(info());
        assert_eq!(transaction.session(), &info().session);
        assert_eq!(transaction.mail_from(), &info().mail_from);
        assert_eq!(transaction.recipients(), ["b@y.test", "c@y.test"]);
        // Asking again gives the same answers.
        assert_eq!(transaction.session().client_ip, "198.51.100.7");
        assert!(transaction.mail_from().is_smtputf8());
    }

    #[test]
    fn a_test_transaction_can_be_adjusted_and_cloned() {
        let mut transaction = Transaction::from(info());
        let copy = transaction.clone();
        if let Some(info) = transaction.info_mut() {
            info.recipients.clear();
        }
        assert!(transaction.recipients().is_empty());
        assert_eq!(copy.recipients().len(), 2, "the clone keeps its own data");
    }

    #[test]
    fn rcpt_input_delegates_to_its_transaction() {
        let input = RcptInput {
            recipient: "d@y.test".into(),
            accepted_so_far: 2,
            transaction: Transaction::from(info()),
        };
        assert_eq!(input.session().auth_user.as_deref(), Some("alice"));
        assert_eq!(input.mail_from().address, "a@x.test");
        assert_eq!(input.transaction.recipients().len(), 2);
        assert!(format!("{input:?}").contains("Transaction(TransactionInfo"));
    }
}
