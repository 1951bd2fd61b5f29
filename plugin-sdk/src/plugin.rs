//! The [`Plugin`] trait a policy plugin implements, and the `export_plugin!` macro.

use crate::types::{
    BounceInput, BounceVerdict, ChooseInput, ChooseVerdict, DataInput, DataVerdict, Hook,
    PluginInfo, RcptInput, RcptVerdict,
};

/// A relay policy plugin: one method per hook, each defaulting to "no opinion".
///
/// Override the hooks you need and name them in [`export_plugin!`](crate::export_plugin);
/// the relay calls only the hooks listed there. One value of the type is created with
/// [`Default`] on first use in each plugin instance and then reused for many calls, so it
/// may cache things such as parsed
/// configuration (a `std::cell::OnceCell` field works well: an instance is single-threaded).
/// The relay may create several instances, and drops an instance after a fault, so state
/// that must be shared or survive goes through the host's key-value store
/// ([`crate::host::kv_set`], [`crate::host::counter_add`]).
///
/// Hooks must not panic on odd input: a panic traps the instance, the relay answers the hook's
/// configured fallback verdict and counts a fault against the plugin.
pub trait Plugin: Default + 'static {
    /// The plugin's name, as it appears in the relay's logs and `relay plugin check`.
    const NAME: &'static str;
    /// The plugin's version, reported by `describe()`.
    const VERSION: &'static str = "0.1.0";

    /// Called for each `RCPT TO`, before the relay replies to it. The session and MAIL FROM
    /// (`input.session()`, `input.mail_from()`) are read on demand: each costs a host call
    /// the first time, so read them only when the decision needs them.
    fn on_rcpt(&self, input: &RcptInput<'_>) -> RcptVerdict {
        let _ = input;
        RcptVerdict::NoOpinion
    }

    /// Called once per message after the end of `DATA`, before the relay replies. Headers and
    /// tags in the verdict are kept even when another plugin makes the decision.
    /// `input.message` and `input.transaction` are read on demand: the relay parses and
    /// copies only what the plugin asks.
    fn on_data(&self, input: &DataInput<'_>) -> DataVerdict {
        let _ = input;
        DataVerdict::default()
    }

    /// Called before each delivery attempt to one destination: picks the source IP or pool,
    /// and may hold the delivery until a later time.
    fn choose_ip(&self, input: &ChooseInput) -> ChooseVerdict {
        let _ = input;
        ChooseVerdict::default()
    }

    /// Called after each failed delivery attempt for one recipient.
    fn on_bounce(&self, input: &BounceInput) -> BounceVerdict {
        let _ = input;
        BounceVerdict::default()
    }
}

/// Exports a [`Plugin`] as the plugin's component and names the hooks it implements.
///
/// ```
/// use plugin_sdk::prelude::*;
///
/// #[derive(Default)]
/// struct MyPlugin;
///
/// impl Plugin for MyPlugin {
///     const NAME: &'static str = "my-plugin";
///
///     fn on_rcpt(&self, _input: &RcptInput) -> RcptVerdict {
///         RcptVerdict::Accept
///     }
///
///     fn on_data(&self, _input: &DataInput) -> DataVerdict {
///         DataVerdict::no_opinion().with_tag("seen-by", "my-plugin")
///     }
/// }
///
/// plugin_sdk::export_plugin!(MyPlugin, hooks: [on_rcpt, on_data]);
///
/// // What the relay will see from describe():
/// assert_eq!(MyPlugin::describe().hooks, [Hook::OnRcpt, Hook::OnData]);
/// ```
///
/// The relay calls only the listed hooks (and `relay plugin check` prints them), so a hook
/// you override but do not list is never called. Use the macro once per plugin crate, at
/// module level (normally in `lib.rs`).
///
/// The expansion implements the component's exports: `describe()` answers from
/// [`Plugin::NAME`], [`Plugin::VERSION`] and the list (see
/// [`Exported`], which the macro implements for your type); each hook creates the plugin
/// value with [`Default`] on first use in the instance, then calls the trait method with a
/// reference to the input. It also installs a panic hook that sends the panic message to the
/// relay's log at error level, so a crash is not silent. The component exports are only
/// emitted when compiling for `wasm32`; natively the macro still type-checks everything.
///
/// Hook names are `on_rcpt`, `on_data`, `choose_ip` and `on_bounce`; any other name is a
/// compile error:
///
/// ```compile_fail
/// # use plugin_sdk::prelude::*;
/// # #[derive(Default)]
/// # struct MyPlugin;
/// # impl Plugin for MyPlugin { const NAME: &'static str = "x"; }
/// plugin_sdk::export_plugin!(MyPlugin, hooks: [on_rcpt_to]); // unknown hook `on_rcpt_to`
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty, hooks: [$($hook:ident),* $(,)?] $(,)?) => {
        impl $crate::Exported for $plugin {
            const HOOKS: &'static [$crate::types::Hook] = &[$($crate::__plugin_sdk_hook!($hook)),*];
        }

        // The Guest impl is type-checked on every target, but only exported on wasm32: the
        // component's export names (`relay:policy/hooks@0.4.0#on-rcpt`) are not valid symbol
        // names for a native cdylib.
        #[allow(dead_code)]
        const _: () = {
            struct __PluginSdkGuest;

            ::std::thread_local! {
                static __PLUGIN_SDK_INSTANCE: $plugin = $crate::__private::instantiate::<$plugin>();
            }

            impl $crate::bindings::exports::relay::policy::hooks::Guest for __PluginSdkGuest {
                fn describe() -> $crate::types::PluginInfo {
                    $crate::__private::describe::<$plugin>()
                }

                fn on_rcpt(
                    input: $crate::bindings::relay::policy::types::RcptInput,
                    transaction: &$crate::bindings::relay::policy::types::Transaction,
                ) -> $crate::types::RcptVerdict {
                    __PLUGIN_SDK_INSTANCE.with(|plugin| {
                        $crate::__private::on_rcpt(plugin, input, transaction)
                    })
                }

                fn on_data(
                    input: $crate::bindings::relay::policy::types::DataInput,
                    transaction: &$crate::bindings::relay::policy::types::Transaction,
                    message: &$crate::bindings::relay::policy::types::Message,
                ) -> $crate::types::DataVerdict {
                    __PLUGIN_SDK_INSTANCE.with(|plugin| {
                        $crate::__private::on_data(plugin, input, transaction, message)
                    })
                }

                fn choose_ip(input: $crate::types::ChooseInput) -> $crate::types::ChooseVerdict {
                    __PLUGIN_SDK_INSTANCE.with(|plugin| $crate::__private::choose_ip(plugin, &input))
                }

                fn on_bounce(input: $crate::types::BounceInput) -> $crate::types::BounceVerdict {
                    __PLUGIN_SDK_INSTANCE.with(|plugin| $crate::__private::on_bounce(plugin, &input))
                }
            }

            #[cfg(target_arch = "wasm32")]
            $crate::bindings::__export_plugin_bindings!(__PluginSdkGuest);
        };
    };
}

/// What [`export_plugin!`](crate::export_plugin) records about an exported plugin: the
/// hooks it listed.
///
/// Implemented by the macro; do not implement it by hand. [`Exported::describe`] is what the
/// relay sees from `describe()`, so a test can check the export line:
/// `assert_eq!(MyPlugin::describe().hooks, [Hook::OnRcpt])`.
pub trait Exported: Plugin {
    /// The hooks named in the `export_plugin!` line, in that order.
    const HOOKS: &'static [Hook];

    /// The plugin's `describe()` answer: name, version and hooks (each once).
    fn describe() -> PluginInfo {
        let mut hooks: Vec<Hook> = Vec::with_capacity(Self::HOOKS.len());
        for hook in Self::HOOKS {
            if !hooks.contains(hook) {
                hooks.push(*hook);
            }
        }
        PluginInfo {
            name: Self::NAME.to_owned(),
            version: Self::VERSION.to_owned(),
            hooks,
        }
    }
}

/// Maps a hook name in `export_plugin!`'s list to its [`crate::types::Hook`].
#[doc(hidden)]
#[macro_export]
macro_rules! __plugin_sdk_hook {
    (on_rcpt) => {
        $crate::types::Hook::OnRcpt
    };
    (on_data) => {
        $crate::types::Hook::OnData
    };
    (choose_ip) => {
        $crate::types::Hook::ChooseIp
    };
    (on_bounce) => {
        $crate::types::Hook::OnBounce
    };
    ($other:ident) => {
        ::core::compile_error!(::core::concat!(
            "unknown hook `",
            ::core::stringify!($other),
            "` in export_plugin!: expected on_rcpt, on_data, choose_ip or on_bounce"
        ))
    };
}

#[cfg(test)]
mod tests {
    use crate::prelude::*;
    use crate::testing::{self, TestHost};

    #[derive(Default)]
    struct Quiet;

    impl Plugin for Quiet {
        const NAME: &'static str = "quiet";
    }

    crate::export_plugin!(Quiet, hooks: []);

    #[derive(Default)]
    struct Busy {
        calls: std::cell::Cell<u32>,
    }

    impl Plugin for Busy {
        const NAME: &'static str = "busy";
        const VERSION: &'static str = "2.3.4";

        fn on_rcpt(&self, _input: &RcptInput) -> RcptVerdict {
            self.calls.set(self.calls.get() + 1);
            RcptVerdict::Accept
        }
    }

    crate::export_plugin!(Busy, hooks: [on_bounce, on_rcpt, on_rcpt, choose_ip, on_data,]);

    #[test]
    fn default_hooks_have_no_opinion() {
        let _host = TestHost::new();
        let plugin = Quiet;
        assert_eq!(
            plugin.on_rcpt(&testing::rcpt("a@x.test", "b@y.test")),
            RcptVerdict::NoOpinion
        );
        let data = plugin.on_data(&testing::message().into_data("a@x.test", &["b@y.test"]));
        assert_eq!(data, DataVerdict::no_opinion());
        assert_eq!(
            plugin.choose_ip(&testing::choose("y.test")),
            ChooseVerdict::no_opinion()
        );
        let bounce = plugin.on_bounce(&testing::bounce("b@y.test", 550, "5.1.1", "unknown"));
        assert_eq!(bounce, BounceVerdict::no_opinion());
    }

    #[test]
    fn describe_reports_name_version_defaults_and_no_hooks() {
        let info = Quiet::describe();
        assert_eq!(info.name, "quiet");
        assert_eq!(info.version, "0.1.0");
        assert!(info.hooks.is_empty());
    }

    #[test]
    fn describe_lists_each_exported_hook_once_in_macro_order() {
        let info = Busy::describe();
        assert_eq!(info.version, "2.3.4");
        assert_eq!(
            info.hooks,
            [Hook::OnBounce, Hook::OnRcpt, Hook::ChooseIp, Hook::OnData]
        );
    }

    #[test]
    fn overridden_hook_is_called_through_the_trait() {
        let _host = TestHost::new();
        let plugin = Busy::default();
        let input = testing::rcpt("a@x.test", "b@y.test");
        assert_eq!(plugin.on_rcpt(&input), RcptVerdict::Accept);
        assert_eq!(plugin.on_rcpt(&input), RcptVerdict::Accept);
        assert_eq!(plugin.calls.get(), 2);
    }
}
