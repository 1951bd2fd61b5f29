//! `[dkim]` at work: which keys sign a message, and the signatures for it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::DkimConfig;
use crate::dkim::{self, Canonicalization, DkimError, DkimKey, SignerSpec};

/// The configured keys by signing domain, and how the domain is chosen.
pub(crate) struct Signing {
    /// Lower-case domain -> its keys, in config order (one signature each).
    keys: HashMap<String, Arc<[SignerSpec]>>,
    /// Lower-case fallback domain.
    fallback: Option<String>,
    /// The tag a plugin sets to choose the domain.
    tag: String,
}

impl Signing {
    /// Loads every `[[dkim.key]]`; an unusable key stops the relay with its file and reason.
    pub(crate) fn load(config: &DkimConfig) -> Result<Signing, String> {
        let mut keys: HashMap<String, Vec<SignerSpec>> = HashMap::new();
        for key in &config.keys {
            let domain = key.domain.to_ascii_lowercase();
            let named = |err: DkimError| {
                format!(
                    "[[dkim.key]] {} (selector {}): {err}",
                    key.domain, key.selector
                )
            };
            let loaded = DkimKey::load(&key.key_file).map_err(named)?;
            let mut spec = SignerSpec::new(&domain, &key.selector, Arc::new(loaded));
            if let Some(headers) = &key.headers {
                spec.headers = headers.clone();
            }
            spec.canonicalization =
                Canonicalization::parse(&key.canonicalization).map_err(named)?;
            spec.expire = key.expire.map(|e| e.0);
            spec.validate().map_err(named)?;
            keys.entry(domain).or_default().push(spec);
        }
        Ok(Signing {
            keys: keys
                .into_iter()
                .map(|(domain, specs)| (domain, Arc::from(specs)))
                .collect(),
            fallback: config
                .fallback_domain
                .as_ref()
                .map(|d| d.to_ascii_lowercase()),
            tag: config.tag.clone(),
        })
    }

    /// The keys that sign a message with these tags and this From domain: the tagged domain's,
    /// else the From domain's, else the fallback's; `None` when none of them has keys.
    pub(crate) fn keys_for(
        &self,
        tags: &[(String, String)],
        from_domain: Option<&str>,
    ) -> Option<Arc<[SignerSpec]>> {
        let tagged = tags
            .iter()
            .rev()
            .find(|(key, _)| *key == self.tag)
            .map(|(_, value)| value.to_ascii_lowercase());
        [
            tagged,
            from_domain.map(str::to_ascii_lowercase),
            self.fallback.clone(),
        ]
        .into_iter()
        .flatten()
        .find_map(|domain| self.keys.get(&domain).cloned())
    }
}

/// [`sign_all`] on the blocking pool (an RSA signature takes about half a millisecond, too long
/// for the async workers); a failure to sign, or of the task, as text.
pub(crate) async fn sign_off_thread(
    keys: Arc<[SignerSpec]>,
    message: Vec<u8>,
    now: u64,
) -> Result<String, String> {
    match tokio::task::spawn_blocking(move || sign_all(&keys, &message, now)).await {
        Ok(Ok(fields)) => Ok(fields),
        Ok(Err(err)) => Err(err.to_string()),
        Err(err) => Err(err.to_string()),
    }
}

/// One `DKIM-Signature` field per key, in order, for `message` (the message as it will be
/// queued), signed at `now` (Unix seconds).
fn sign_all(keys: &[SignerSpec], message: &[u8], now: u64) -> Result<String, DkimError> {
    let mut fields = String::new();
    for key in keys {
        fields.push_str(&dkim::sign(key, message, now)?);
    }
    Ok(fields)
}
