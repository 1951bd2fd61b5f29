//! `choose_ip` verdicts a plugin allowed the relay to reuse (`reuse-ms`), per plugin.
//!
//! A verdict is kept under the inputs it may depend on: the sender's domain, the destination
//! domain, the MX host and the tags. Another delivery with the same key gets it without a
//! plugin call until it expires. The cache lives in the loaded plugin, so replacing the file
//! forgets every verdict of the old version.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ChooseVerdict;

/// The longest a verdict is kept, whatever the plugin asked.
pub(super) const MAX_REUSE: Duration = Duration::from_secs(3600);
/// Verdicts kept per plugin; when full, expired ones go, and if none had expired, all of them.
const MAX_ENTRIES: usize = 4096;

/// The inputs a reusable verdict may depend on, as one string: the sender's domain (`""` for
/// the null sender), destination domain and MX host in lower case, then the tags, each
/// `key U+0001 value`, all separated by NUL. Neither control character can occur inside: the
/// relay turns control characters in tags into spaces, and names and addresses cannot hold
/// them.
///
/// Made from the relay's own values, so that a reused answer costs no `choose_ip` input.
pub(crate) fn key<'a>(
    sender_domain: &str,
    domain: &str,
    mx_host: &str,
    tags: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut key = String::with_capacity(sender_domain.len() + domain.len() + mx_host.len() + 3);
    for part in [sender_domain, domain, mx_host] {
        key.extend(part.chars().map(|c| c.to_ascii_lowercase()));
        key.push('\0');
    }
    for (name, value) in tags {
        key.push_str(name);
        key.push('\u{1}');
        key.push_str(value);
        key.push('\0');
    }
    key
}

/// [`key`] of a whole `choose_ip` input.
#[cfg(test)]
pub(crate) fn key_of(input: &super::ChooseInput) -> String {
    key(
        input.sender.rsplit_once('@').map_or("", |(_, d)| d),
        &input.domain,
        &input.mx_host,
        input
            .tags
            .iter()
            .map(|t| (t.key.as_str(), t.value.as_str())),
    )
}

/// One plugin's reusable verdicts.
#[derive(Default)]
pub(super) struct VerdictCache {
    entries: Mutex<HashMap<String, (ChooseVerdict, Instant)>>,
}

impl VerdictCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (ChooseVerdict, Instant)>> {
        match self.entries.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The verdict kept for `key`, if it has not expired at `now`.
    pub fn get(&self, key: &str, now: Instant) -> Option<ChooseVerdict> {
        let mut entries = self.entries();
        match entries.get(key) {
            Some((verdict, expires)) if *expires > now => Some(verdict.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `verdict` for `key` if the plugin allowed reuse (`reuse_ms` > 0), for at most
    /// [`MAX_REUSE`].
    pub fn put(&self, key: String, verdict: &ChooseVerdict, now: Instant) {
        if verdict.reuse_ms == 0 {
            return;
        }
        let ttl = Duration::from_millis(u64::from(verdict.reuse_ms)).min(MAX_REUSE);
        let mut entries = self.entries();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (verdict.clone(), now + ttl));
    }

    /// Verdicts kept now (expired ones included until they are met).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ChooseInput, IpChoice};

    fn input(sender: &str, domain: &str, mx: &str, tags: &[(&str, &str)]) -> ChooseInput {
        ChooseInput {
            sender: sender.to_string(),
            domain: domain.to_string(),
            mx_host: mx.to_string(),
            ..crate::policy::tests::choose(tags)
        }
    }

    fn pool(name: &str, reuse_ms: u32) -> ChooseVerdict {
        ChooseVerdict {
            choice: IpChoice::Pool(name.to_string()),
            not_before: None,
            reuse_ms,
        }
    }

    #[test]
    fn the_key_is_sender_domain_destination_mx_and_tags() {
        let base = key_of(&input("a@Shop.test", "gmail.com", "mx.gmail.com", &[]));
        assert_eq!(
            base,
            key_of(&input("other@shop.TEST", "GMAIL.com", "MX.gmail.com", &[])),
            "the local part and case do not matter"
        );
        for other in [
            input("a@news.shop.test", "gmail.com", "mx.gmail.com", &[]),
            input("a@shop.test", "yahoo.com", "mx.gmail.com", &[]),
            input("a@shop.test", "gmail.com", "mx2.gmail.com", &[]),
            input(
                "a@shop.test",
                "gmail.com",
                "mx.gmail.com",
                &[("pool", "bulk")],
            ),
        ] {
            assert_ne!(base, key_of(&other), "{other:?}");
        }
        assert_ne!(
            key_of(&input("a@shop.test", "gmail.com", "mx", &[("a", "b=c")])),
            key_of(&input("a@shop.test", "gmail.com", "mx", &[("a=b", "c")])),
            "tag boundaries are kept apart"
        );
        assert_eq!(key_of(&input("", "x.test", "", &[])), "\0x.test\0\0");
    }

    #[test]
    fn verdicts_are_kept_only_when_allowed_and_until_they_expire() {
        let cache = VerdictCache::default();
        let now = Instant::now();
        cache.put("k".to_string(), &pool("bulk", 0), now);
        assert_eq!(cache.get("k", now), None, "reuse 0 is never kept");

        cache.put("k".to_string(), &pool("bulk", 1000), now);
        assert_eq!(cache.get("k", now), Some(pool("bulk", 1000)));
        assert_eq!(
            cache.get("k", now + Duration::from_millis(999)),
            Some(pool("bulk", 1000))
        );
        assert_eq!(cache.get("other", now), None);
        assert_eq!(
            cache.get("k", now + Duration::from_millis(1000)),
            None,
            "expired"
        );
        assert_eq!(cache.len(), 0, "an expired verdict is dropped when met");
    }

    #[test]
    fn reuse_is_capped_at_an_hour() {
        let cache = VerdictCache::default();
        let now = Instant::now();
        cache.put("k".to_string(), &pool("bulk", u32::MAX), now);
        assert!(cache
            .get("k", now + MAX_REUSE - Duration::from_millis(1))
            .is_some());
        assert_eq!(cache.get("k", now + MAX_REUSE), None);
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = VerdictCache::default();
        let now = Instant::now();
        for i in 0..MAX_ENTRIES {
            cache.put(format!("k{i}"), &pool("p", 10), now);
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        // Full of live entries: the next one starts over.
        cache.put("new".to_string(), &pool("p", 10), now);
        assert_eq!(cache.len(), 1);
        assert!(cache.get("new", now).is_some());
        // Full with expired entries: only those go.
        for i in 0..MAX_ENTRIES - 1 {
            cache.put(format!("k{i}"), &pool("p", 1), now);
        }
        let later = now + Duration::from_millis(5);
        cache.put("newest".to_string(), &pool("p", 10), later);
        assert_eq!(cache.len(), 2, "the expired ones went, the live one stayed");
        assert!(cache.get("new", later).is_some());
    }
}
