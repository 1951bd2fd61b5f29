//! SMTP AUTH: the users file and password verification ([`Users`]), the brute-force limiter
//! ([`AuthLimiter`]), and the file edits behind `relay user`.
//!
//! The SMTP session asks [`AuthLimiter::check`] before verifying, [`Users::verify`] to verify,
//! then reports the outcome with [`AuthLimiter::success`] or [`AuthLimiter::failure`].

mod limiter;
mod users;

pub use limiter::{Admission, AuthLimiter, LimiterSettings, MAX_TRACKED};
pub use users::{
    hash_password, list_users, remove_user, set_user, Change, HashError, LineError, NameError,
    UserName, Users, UsersError, Verified, MAX_MEMORY_KIB, MAX_NAME_LEN, MAX_PASSES,
};
