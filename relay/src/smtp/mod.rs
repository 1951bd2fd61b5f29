//! Inbound SMTP: a sans-IO protocol (parser, replies, DATA/BDAT decoder, session
//! state machine) that takes bytes in and gives replies and steps out, plus the
//! tokio listener that moves the bytes.
//!
//! Everything except `listener` builds without the `server` feature, so the
//! fuzz targets and unit tests exercise the protocol without sockets.

pub mod address;
pub mod command;
pub mod data;
pub mod received;
pub mod reply;
pub mod session;

#[cfg(feature = "server")]
pub(crate) mod listener;

pub use address::{AddressError, Mailbox, ReversePath};
pub use command::{parse_command, Body, Command, CommandError, MailParams, Verb};
pub use data::{BareLineEnding, DataDecoder, DataError, DataLimits, DecodedMessage};
pub use received::{received_header, rfc5322_date, ReceivedInfo};
pub use reply::{EnhancedCode, Reply};
pub use session::{
    AuthOffer, AuthRequest, ClientInfo, IncomingMessage, MailRequest, RcptRequest, Resolution,
    Session, SessionConfig, Step,
};
