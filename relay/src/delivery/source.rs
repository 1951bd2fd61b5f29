//! Source addresses for outgoing connections: the configured `[[source]]`s and `[[pool]]`s,
//! and the choice between them (a plugin's answer, else the default pool).

use std::net::IpAddr;

use rand::Rng;

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
    pub(crate) fn pick(&self, choice: &IpChoice) -> Option<Source> {
        let name = match choice {
            IpChoice::Source(name) | IpChoice::Pool(name) => Some(name.as_str()),
            IpChoice::NoOpinion => None,
        };
        if let Some(name) = name {
            match self.by_name(name) {
                Some(source) => return Some(source),
                None => {
                    tracing::warn!(event = "plugin_bad_output", hook = "choose_ip", choice = %name, "no source or pool of that name (or IP); using the default")
                }
            }
        }
        self.default.as_deref().and_then(|d| self.by_name(d))
    }

    /// A source by name or IP, or a weighted random member of a pool by name.
    fn by_name(&self, name: &str) -> Option<Source> {
        if let Some(source) = self
            .sources
            .iter()
            .find(|s| s.name == name || s.ip.to_string() == name)
        {
            return Some(source.clone());
        }
        let (_, members) = self.pools.iter().find(|(n, _)| n == name)?;
        let total: u64 = members.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let mut ticket = rand::rng().random_range(0..total);
        for (i, weight) in members {
            if ticket < u64::from(*weight) {
                return Some(self.sources[*i].clone());
            }
            ticket -= u64::from(*weight);
        }
        None
    }
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
            s.pick(&IpChoice::Source("a".into())).map(|x| x.ehlo),
            Some("a.relay.test".into())
        );
        assert_eq!(
            s.pick(&IpChoice::Source("127.0.0.3".into()))
                .map(|x| (x.name, x.ehlo)),
            Some(("b".into(), "relay.test".into())),
            "a source without ehlo uses the relay's EHLO name"
        );
        assert_eq!(
            s.pick(&IpChoice::Pool("only-b".into())).map(|x| x.name),
            Some("b".into())
        );
    }

    #[test]
    fn no_choice_or_an_unknown_name_uses_the_default_pool_by_weight() {
        let s = sources();
        let mut a = 0;
        for _ in 0..4000 {
            let picked = s.pick(&IpChoice::NoOpinion).expect("default pool");
            if picked.name == "a" {
                a += 1;
            }
        }
        assert!(
            (2700..3300).contains(&a),
            "weights 3:1 gave {a} of 4000 to a"
        );
        assert!(s.pick(&IpChoice::Pool("ghost".into())).is_some());
    }
}
