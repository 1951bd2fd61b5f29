//! Source addresses for outgoing connections: the configured `[[source]]`s and `[[pool]]`s,
//! and the choice between them (a plugin's answer, else the default pool).

use std::net::IpAddr;

use crate::config::Config;
use crate::policy::{IpChoice, Pool, PoolMember, Source as WitSource};

/// One local address to send from, with the EHLO name that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) name: String,
    pub(crate) ip: IpAddr,
    pub(crate) ehlo: String,
}

/// All configured sources and pools.
pub(crate) struct Sources {
    sources: Vec<Source>,
    pools: Vec<(String, Vec<(usize, u32)>)>,
    default: Option<String>,
}

impl Sources {
    pub(crate) fn from_config(config: &Config) -> Sources {
        let fallback_ehlo = config.helo_name().0.clone();
        let sources: Vec<Source> = config
            .sources
            .iter()
            .map(|s| Source {
                name: s.name.clone(),
                ip: s.ip,
                ehlo: s
                    .ehlo
                    .as_ref()
                    .map(|h| h.0.clone())
                    .unwrap_or_else(|| fallback_ehlo.clone()),
            })
            .collect();
        // Config validation guarantees that every member names a source.
        let pools = config
            .pools
            .iter()
            .map(|p| {
                let members = p
                    .members
                    .iter()
                    .filter_map(|m| {
                        sources
                            .iter()
                            .position(|s| s.name == m.source)
                            .map(|i| (i, m.weight))
                    })
                    .collect();
                (p.name.clone(), members)
            })
            .collect();
        Sources {
            sources,
            pools,
            default: config.delivery.default_pool.clone(),
        }
    }

    /// The sources and pools as plugins see them.
    pub(crate) fn for_plugins(&self) -> (Vec<WitSource>, Vec<Pool>) {
        let sources = self
            .sources
            .iter()
            .map(|s| WitSource {
                name: s.name.clone(),
                ip: s.ip.to_string(),
                ehlo: s.ehlo.clone(),
            })
            .collect();
        let pools = self
            .pools
            .iter()
            .map(|(name, members)| Pool {
                name: name.clone(),
                members: members
                    .iter()
                    .map(|(i, weight)| PoolMember {
                        source: self.sources[*i].name.clone(),
                        weight: *weight,
                    })
                    .collect(),
            })
            .collect();
        (sources, pools)
    }

    /// True when neither sources nor pools are configured (the OS picks the address).
    pub(crate) fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Resolves a plugin's choice (or, without one, the default pool) to a source. An unknown
    /// name is logged and treated as no choice; `None` lets the operating system pick.
    ///
    /// A pool's member is picked by weight with `seed` ([`spread_seed`] of the message and the
    /// destination), so every attempt of one delivery comes from the same address while
    /// different messages spread over the pool.
    pub(crate) fn pick(&self, choice: &IpChoice, seed: u64) -> Option<&Source> {
        let name = match choice {
            IpChoice::Source(name) | IpChoice::Pool(name) => Some(name.as_str()),
            IpChoice::NoOpinion => None,
        };
        if let Some(name) = name {
            match self.by_name(name, seed) {
                Some(source) => return Some(source),
                None => {
                    tracing::warn!(event = "plugin_bad_output", hook = "choose_ip", choice = %name, "no source or pool of that name (or IP); using the default")
                }
            }
        }
        self.default.as_deref().and_then(|d| self.by_name(d, seed))
    }

    /// A source by name or IP, or a member of a pool by name, by weight with `seed`.
    fn by_name(&self, name: &str, seed: u64) -> Option<&Source> {
        let ip = name.parse::<IpAddr>().ok();
        if let Some(source) = self
            .sources
            .iter()
            .find(|s| s.name == name || Some(s.ip) == ip)
        {
            return Some(source);
        }
        let (_, members) = self.pools.iter().find(|(n, _)| n == name)?;
        let total: u64 = members.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        // Multiply-shift maps the seed onto 0..total without the bias of `%`.
        let mut ticket = u64::try_from((u128::from(seed) * u128::from(total)) >> 64).unwrap_or(0);
        for (i, weight) in members {
            if ticket < u64::from(*weight) {
                return Some(&self.sources[*i]);
            }
            ticket -= u64::from(*weight);
        }
        None
    }
}

/// A well-mixed 64-bit value per (message, destination domain), stable across attempts,
/// restarts and builds: FNV-1a over both, then the SplitMix64 finalizer so that ids differing
/// in one character land far apart.
pub(crate) fn spread_seed(message_id: &str, domain: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in message_id
        .bytes()
        .chain([0xff])
        .chain(domain.bytes().map(|b| b.to_ascii_lowercase()))
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Sources {
        let config = Config::parse(
            r#"
[server]
hostname = "relay.test"
[delivery]
default_pool = "main"
[[source]]
name = "a"
ip = "127.0.0.2"
ehlo = "a.relay.test"
[[source]]
name = "b"
ip = "127.0.0.3"
[[pool]]
name = "main"
members = [{ source = "a", weight = 3 }, { source = "b", weight = 1 }]
[[pool]]
name = "only-b"
members = [{ source = "b" }]
"#,
            "t.toml",
        )
        .expect("valid");
        Sources::from_config(&config)
    }

    #[test]
    fn sources_are_found_by_name_ip_or_pool() {
        let s = sources();
        assert_eq!(
            s.pick(&IpChoice::Source("a".into()), 0)
                .map(|x| x.ehlo.clone()),
            Some("a.relay.test".into())
        );
        assert_eq!(
            s.pick(&IpChoice::Source("127.0.0.3".into()), 0)
                .map(|x| (x.name.clone(), x.ehlo.clone())),
            Some(("b".into(), "relay.test".into())),
            "a source without ehlo uses the relay's EHLO name"
        );
        assert_eq!(
            s.pick(&IpChoice::Pool("only-b".into()), u64::MAX)
                .map(|x| x.name.clone()),
            Some("b".into())
        );
    }

    #[test]
    fn no_choice_or_an_unknown_name_uses_the_default_pool_by_weight() {
        let s = sources();
        let mut a = 0;
        for i in 0..4000 {
            let seed = spread_seed(&format!("01KAQ{i}"), "example.net");
            let picked = s.pick(&IpChoice::NoOpinion, seed).expect("default pool");
            if picked.name == "a" {
                a += 1;
            }
        }
        assert!(
            (2700..3300).contains(&a),
            "weights 3:1 gave {a} of 4000 to a"
        );
        assert!(s.pick(&IpChoice::Pool("ghost".into()), 0).is_some());
    }

    #[test]
    fn one_delivery_always_picks_the_same_member() {
        let s = sources();
        // Pinned, and the same value ip-pools' own pick pins: a pool answered by ip-pools and
        // one picked here spread a message the same way.
        assert_eq!(spread_seed("msg-1", "example.org"), 0xda87_0493_97a8_fa5b);
        let seed = spread_seed("01KAQ3ZB6W2T5N8Y4H7J9M0C1D", "Example.NET");
        assert_eq!(
            seed,
            spread_seed("01KAQ3ZB6W2T5N8Y4H7J9M0C1D", "example.net")
        );
        let first = s.pick(&IpChoice::Pool("main".into()), seed).expect("pick");
        for _ in 0..10 {
            assert_eq!(s.pick(&IpChoice::Pool("main".into()), seed), Some(first));
        }
        // Other destinations of the same message spread too.
        let names: std::collections::HashSet<String> = (0..64)
            .filter_map(|i| {
                let seed = spread_seed("01KAQ3ZB6W2T5N8Y4H7J9M0C1D", &format!("d{i}.test"));
                s.pick(&IpChoice::Pool("main".into()), seed)
                    .map(|x| x.name.clone())
            })
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
