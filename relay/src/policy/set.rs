//! An immutable, ordered set of plugins and the hook dispatch over it.

use std::sync::Arc;
use std::time::Instant;

use super::host::TransactionInfo;
use super::plugin::{FaultCounts, HookCalls, LoadedPlugin, Outcome};
use crate::inspect::MessageView;

use super::{
    BounceAction, BounceInput, BounceVerdict, ChooseInput, ChooseVerdict, DataAction, DataInput,
    DataVerdict, Fallback, Fallbacks, Header, Hook, IpChoice, RcptInput, RcptVerdict, SmtpReply,
    Tag,
};

/// A snapshot of the loaded plugins, in the order they run (priority, then name).
///
/// Hook calls are synchronous and bounded by the time budget of each plugin they run; they
/// never block on I/O other than the [`super::StateStore`], so they may be called from async
/// code.
pub(crate) struct PluginSet {
    plugins: Vec<Arc<LoadedPlugin>>,
    fallback: Fallbacks,
}

/// A plugin's state, for metrics and the admin API.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PluginStats {
    /// The plugin's name (file stem).
    pub name: String,
    /// What `describe()` gave as its version.
    pub version: String,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Skipped after repeated faults.
    pub quarantined: bool,
    /// Faults by kind.
    pub faults: FaultCounts,
    /// Calls and the time spent in them, for each hook the plugin implements.
    pub calls: Vec<HookCalls>,
}

/// The reply of a fail-closed fallback.
fn policy_unavailable() -> SmtpReply {
    SmtpReply {
        code: 451,
        enhanced: "4.3.0".to_string(),
        text: "policy unavailable, try again later".to_string(),
    }
}

/// Sets `tag` in `tags`: a later value for the same key replaces the earlier one.
fn merge_tag(tags: &mut Vec<Tag>, tag: &Tag) {
    match tags.iter_mut().find(|t| t.key == tag.key) {
        Some(existing) => existing.value.clone_from(&tag.value),
        None => tags.push(tag.clone()),
    }
}

impl PluginSet {
    /// A set running `plugins` in the order given.
    pub(super) fn new(plugins: Vec<Arc<LoadedPlugin>>, fallback: Fallbacks) -> PluginSet {
        PluginSet { plugins, fallback }
    }

    /// True when there are no plugins.
    #[allow(dead_code)] // part of the API the relay codes against
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// True when some (non-quarantined) plugin implements `hook`; when false the relay may skip
    /// building the hook's input.
    pub fn implements(&self, hook: Hook) -> bool {
        self.plugins.iter().any(|p| p.implements(hook))
    }

    /// The plugins' names in the order they run.
    pub fn names(&self) -> Vec<String> {
        self.plugins.iter().map(|p| p.name.clone()).collect()
    }

    /// Each plugin's version, quarantine state, fault counts and call counts.
    pub fn stats(&self) -> Vec<PluginStats> {
        self.plugins
            .iter()
            .map(|p| PluginStats {
                name: p.name.clone(),
                version: p.info.version.clone(),
                sha256: p.hash.clone(),
                quarantined: p.is_quarantined(),
                faults: p.fault_counts(),
                calls: p.call_counts(),
            })
            .collect()
    }

    /// What `on_rcpt` answers when its plugins could not be asked: the fallback of a fault.
    pub fn rcpt_fallback(&self) -> RcptVerdict {
        match self.fallback.on_rcpt {
            Fallback::Tempfail => RcptVerdict::Tempfail(policy_unavailable()),
            _ => RcptVerdict::NoOpinion,
        }
    }

    /// What `on_data` answers when its plugins could not be asked: the fallback of a fault.
    pub fn data_fallback(&self) -> DataVerdict {
        DataVerdict {
            action: self.data_fallback_action(),
            add_headers: Vec::new(),
            tags: Vec::new(),
        }
    }

    /// The action of [`PluginSet::data_fallback`].
    fn data_fallback_action(&self) -> DataAction {
        match self.fallback.on_data {
            Fallback::Tempfail => DataAction::Tempfail(policy_unavailable()),
            _ => DataAction::NoOpinion,
        }
    }

    fn running(&self, hook: Hook) -> impl Iterator<Item = &Arc<LoadedPlugin>> {
        self.plugins.iter().filter(move |p| p.implements(hook))
    }

    /// [`PluginSet::on_rcpt_each`] for one recipient.
    #[cfg(test)]
    pub fn on_rcpt(&self, input: &RcptInput, transaction: &Arc<TransactionInfo>) -> RcptVerdict {
        let mut verdict = [None];
        self.on_rcpt_each(&mut verdict, |_| (input, transaction));
        let [verdict] = verdict;
        verdict.unwrap_or(RcptVerdict::NoOpinion)
    }

    /// Asks the plugins about recipients; for each, the first answer other than no-opinion
    /// wins. A fault gives the `on_rcpt` fallback: no opinion (fail-open) or `451 4.3.0`.
    ///
    /// `question(i)` is the i-th recipient and its transaction, which each plugin gets as a
    /// borrowed `transaction` handle for its call; `verdicts[i]` gets the answer (`None`: no
    /// plugin had an opinion). The questions are asked plugin by plugin: each plugin answers
    /// every question still open before the next plugin runs, so its instance, its code and the
    /// host code it calls stay in the CPU's caches from one question to the next (see
    /// [`super::batch`]). Each question meets exactly the plugins it would meet alone.
    pub fn on_rcpt_each<'a>(
        &self,
        verdicts: &mut [Option<RcptVerdict>],
        question: impl Fn(usize) -> (&'a RcptInput, &'a Arc<TransactionInfo>),
    ) {
        for plugin in self.running(Hook::OnRcpt) {
            for (i, verdict) in verdicts.iter_mut().enumerate() {
                if verdict.is_some() {
                    continue;
                }
                let (input, transaction) = question(i);
                match plugin.call(Hook::OnRcpt, |p, store| {
                    let lent = store.data_mut().lend_transaction(transaction);
                    let verdict = p
                        .relay_policy_hooks()
                        .call_on_rcpt(&mut *store, input, lent);
                    store.data_mut().end_loans();
                    verdict
                }) {
                    Outcome::Done(RcptVerdict::NoOpinion) | Outcome::Skipped => {}
                    Outcome::Done(answer) => *verdict = Some(answer),
                    Outcome::Failed => {
                        if let fallback @ RcptVerdict::Tempfail(_) = self.rcpt_fallback() {
                            *verdict = Some(fallback);
                        }
                    }
                }
            }
        }
    }

    /// [`PluginSet::on_data_each`] for one message.
    #[cfg(test)]
    pub fn on_data(
        &self,
        input: &DataInput,
        transaction: &Arc<TransactionInfo>,
        message: &Arc<MessageView>,
    ) -> DataVerdict {
        let mut run = [DataRun::new(input)];
        self.on_data_each(&mut run, |_| (transaction, message));
        let [run] = run;
        run.finish()
    }

    /// Asks every plugin about messages. For each, the action is the first other than
    /// no-opinion (a fault with a fail-closed fallback counts as `451 4.3.0`); headers and tags
    /// accumulate over all plugins, and each plugin sees the tags set before it in the input.
    ///
    /// `runs[i]` holds the i-th message's input and collects its verdict; `message(i)` is its
    /// transaction and message, which each plugin gets as borrowed handles for its call (what
    /// one plugin asked of a message is not parsed again for the next). Plugin by plugin, as
    /// [`PluginSet::on_rcpt_each`].
    pub fn on_data_each<'a>(
        &self,
        runs: &mut [DataRun<'_>],
        message: impl Fn(usize) -> (&'a Arc<TransactionInfo>, &'a Arc<MessageView>),
    ) {
        for plugin in self.running(Hook::OnData) {
            for (i, run) in runs.iter_mut().enumerate() {
                let (transaction, message) = message(i);
                let current = run.current();
                let outcome = plugin.call(Hook::OnData, |p, store| {
                    let state = store.data_mut();
                    let lent_transaction = state.lend_transaction(transaction);
                    let lent_message = state.lend_message(message);
                    let verdict = p.relay_policy_hooks().call_on_data(
                        &mut *store,
                        current,
                        lent_transaction,
                        lent_message,
                    );
                    store.data_mut().end_loans();
                    verdict
                });
                run.absorb(outcome, || self.data_fallback_action());
            }
        }
    }

    /// Asks every plugin where the delivery should come from. The choice is the first other
    /// than no-opinion; `not_before` is the latest any plugin asked for (holding is the safe
    /// side). A fault means no opinion (the default pool).
    ///
    /// `key` is [`super::reuse::key`] of the delivery: a plugin that allowed its verdict for that key
    /// to be reused (`reuse-ms`) is not called again until that runs out. `input` builds the
    /// hook's input, at most once, and only when some plugin has to be called.
    pub fn choose_ip(&self, key: &str, input: impl Fn() -> ChooseInput) -> ChooseVerdict {
        let mut choice = IpChoice::NoOpinion;
        let mut not_before: Option<u64> = None;
        let mut built: Option<ChooseInput> = None;
        let now = Instant::now();
        for plugin in self.running(Hook::ChooseIp) {
            let verdict = match plugin.reused_choice(key, now) {
                Some(verdict) => verdict,
                None => {
                    let input = built.get_or_insert_with(&input);
                    match plugin.call(Hook::ChooseIp, |p, store| {
                        p.relay_policy_hooks().call_choose_ip(store, input)
                    }) {
                        Outcome::Done(verdict) => {
                            plugin.keep_choice(key.to_owned(), &verdict, now);
                            verdict
                        }
                        Outcome::Failed | Outcome::Skipped => continue,
                    }
                }
            };
            if choice == IpChoice::NoOpinion {
                choice = verdict.choice;
            }
            not_before = match (not_before, verdict.not_before) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        ChooseVerdict {
            choice,
            not_before,
            reuse_ms: 0,
        }
    }

    /// Asks the plugins about a failed attempt. The action is the first other than
    /// no-opinion, the class the first given; plugins run until both are known. A fault means
    /// no opinion (the relay's own retry schedule).
    pub fn on_bounce(&self, input: &BounceInput) -> BounceVerdict {
        let mut action = BounceAction::NoOpinion;
        let mut class: Option<String> = None;
        for plugin in self.running(Hook::OnBounce) {
            if action != BounceAction::NoOpinion && class.is_some() {
                break;
            }
            if let Outcome::Done(verdict) = plugin.call(Hook::OnBounce, |p, store| {
                p.relay_policy_hooks().call_on_bounce(store, input)
            }) {
                if action == BounceAction::NoOpinion {
                    action = verdict.action;
                }
                if class.is_none() {
                    class = verdict.class;
                }
            }
        }
        BounceVerdict { action, class }
    }
}

/// One message's way through the `on_data` plugins: its input and what they answered so far.
pub(crate) struct DataRun<'a> {
    input: &'a DataInput,
    /// A copy of the input with the tags set so far, made only once some plugin sets a tag.
    tagged: Option<DataInput>,
    action: Option<DataAction>,
    add_headers: Vec<Header>,
    tags: Vec<Tag>,
}

impl<'a> DataRun<'a> {
    /// A run that no plugin has answered yet.
    pub fn new(input: &'a DataInput) -> DataRun<'a> {
        DataRun {
            input,
            tagged: None,
            action: None,
            add_headers: Vec::new(),
            tags: Vec::new(),
        }
    }

    /// The input for the next plugin: the tags set before it included.
    fn current(&self) -> &DataInput {
        self.tagged.as_ref().unwrap_or(self.input)
    }

    /// Takes in one plugin's outcome; `fallback` is the action a fault counts as.
    fn absorb(&mut self, outcome: Outcome<DataVerdict>, fallback: impl FnOnce() -> DataAction) {
        match outcome {
            Outcome::Done(verdict) => {
                if self.action.is_none() && verdict.action != DataAction::NoOpinion {
                    self.action = Some(verdict.action);
                }
                if self.add_headers.is_empty() {
                    self.add_headers = verdict.add_headers;
                } else {
                    self.add_headers.extend(verdict.add_headers);
                }
                if !verdict.tags.is_empty() {
                    let input = self.input;
                    let next = self.tagged.get_or_insert_with(|| input.clone());
                    for tag in &verdict.tags {
                        merge_tag(&mut next.tags, tag);
                    }
                    self.tags.extend(verdict.tags);
                }
            }
            Outcome::Failed => {
                if self.action.is_none() {
                    self.action = Some(fallback()).filter(|a| *a != DataAction::NoOpinion);
                }
            }
            Outcome::Skipped => {}
        }
    }

    /// The verdict of all the plugins that ran.
    pub fn finish(self) -> DataVerdict {
        DataVerdict {
            action: self.action.unwrap_or(DataAction::NoOpinion),
            add_headers: self.add_headers,
            tags: self.tags,
        }
    }
}
