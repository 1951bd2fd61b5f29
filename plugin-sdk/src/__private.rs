//! Support code for the expansion of `export_plugin!`: not a stable API.

pub use wit_bindgen;

use crate::bindings::relay::policy::types as wit;
use crate::types::{
    BounceInput, BounceVerdict, ChooseInput, ChooseVerdict, DataInput, DataVerdict, Message,
    PluginInfo, RcptInput, RcptVerdict, Transaction,
};
use crate::{Exported, Plugin};

/// Runs once per instance before the first hook: installs the panic hook.
fn enter() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(install_panic_hook);
}

/// Longest panic message forwarded to the host, in bytes.
const MAX_PANIC_MESSAGE: usize = 2048;

/// Forwards panic messages to the host's log: the relay discards a plugin's stderr, so
/// without this a panicking plugin only shows up as an anonymous trap.
///
/// In the guest the previous (default) hook is not chained: it would only write to the
/// discarded stderr, after reading `RUST_BACKTRACE` through WASI. Natively it is, so tests
/// still show panics the usual way.
fn install_panic_hook() {
    #[cfg(not(target_arch = "wasm32"))]
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        crate::host::log(crate::types::Level::Error, &panic_line(info));
        #[cfg(not(target_arch = "wasm32"))]
        previous(info);
    }));
}

/// One log line for a panic: `plugin panicked at src/lib.rs:9:9: message`, capped in size.
fn panic_line(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info
        .payload_as_str()
        .unwrap_or("(a panic payload that is not a string)");
    let mut line = match info.location() {
        Some(at) => format!(
            "plugin panicked at {}:{}:{}: {payload}",
            at.file(),
            at.line(),
            at.column()
        ),
        None => format!("plugin panicked: {payload}"),
    };
    if line.len() > MAX_PANIC_MESSAGE {
        line.truncate(line.floor_char_boundary(MAX_PANIC_MESSAGE));
        line.push_str("...");
    }
    line
}

/// Creates the plugin value for this instance.
pub fn instantiate<P: Plugin>() -> P {
    enter();
    P::default()
}

/// Answers `describe()`.
pub fn describe<P: Exported>() -> PluginInfo {
    enter();
    P::describe()
}

/// Routes `on-rcpt` to the trait, with the relay's transaction handle as
/// [`crate::types::Transaction`].
pub fn on_rcpt<P: Plugin>(
    plugin: &P,
    input: wit::RcptInput,
    transaction: &wit::Transaction,
) -> RcptVerdict {
    let input = RcptInput {
        recipient: input.recipient,
        accepted_so_far: input.accepted_so_far,
        transaction: Transaction::from_host(transaction),
    };
    plugin.on_rcpt(&input)
}

/// Routes `on-data` to the trait, with the relay's handles as [`crate::types::Transaction`]
/// and [`crate::types::Message`].
pub fn on_data<P: Plugin>(
    plugin: &P,
    input: wit::DataInput,
    transaction: &wit::Transaction,
    message: &wit::Message,
) -> DataVerdict {
    let input = DataInput {
        transaction: Transaction::from_host(transaction),
        message: Message::from_host(message),
        tags: input.tags,
    };
    plugin.on_data(&input)
}

/// Routes `choose-ip` to the trait.
pub fn choose_ip<P: Plugin>(plugin: &P, input: &ChooseInput) -> ChooseVerdict {
    plugin.choose_ip(input)
}

/// Routes `on-bounce` to the trait.
pub fn on_bounce<P: Plugin>(plugin: &P, input: &BounceInput) -> BounceVerdict {
    plugin.on_bounce(input)
}

#[cfg(test)]
mod tests {
    use crate::testing::TestHost;
    use crate::types::Level;

    #[test]
    fn panic_message_is_forwarded_to_the_host_log_on_one_line() {
        let host = TestHost::new();
        super::enter();
        let result = std::panic::catch_unwind(|| panic!("boom for {}", "b@y.test"));
        assert!(result.is_err());
        assert!(
            host.logged_at(
                Level::Error,
                "plugin panicked at plugin-sdk/src/__private.rs:"
            ),
            "{:?}",
            host.logs()
        );
        assert!(host.logged_at(Level::Error, ": boom for b@y.test"));
        assert!(host.logs().iter().all(|line| !line.message.contains('\n')));
    }

    #[test]
    fn huge_panic_message_is_capped() {
        let host = TestHost::new();
        super::enter();
        let result = std::panic::catch_unwind(|| panic!("{}", "é".repeat(10_000)));
        assert!(result.is_err());
        let logs = host.logs();
        let line = logs
            .iter()
            .find(|l| l.level == Level::Error)
            .expect("panic logged");
        assert!(line.message.len() <= super::MAX_PANIC_MESSAGE + 3);
        assert!(line.message.ends_with("..."));
    }
}
