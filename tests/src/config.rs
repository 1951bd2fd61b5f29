//! Builds the relay's TOML config for a test from a few parameters (see the contract's config section).

use std::net::SocketAddr;

/// Replaced by [`crate::RelayProcess`] with its private working directory (config file, spool).
pub const WORKDIR: &str = "@WORKDIR@";

/// A relay config: sections of `key = value` lines (values are TOML literals) plus routes.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    sections: Vec<(String, Vec<(String, String)>)>,
    routes: Vec<(String, String)>,
    raw: Vec<String>,
}

/// Quotes `s` as a TOML basic string.
pub fn toml_str(s: &str) -> String {
    // JSON string escapes are a subset of TOML basic-string escapes.
    serde_json::Value::String(s.to_string()).to_string()
}

/// A TOML array of strings.
pub fn toml_array(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", quoted.join(", "))
}

impl RelayConfig {
    /// Test defaults: listens on 127.0.0.1:0, hostname relay.test, relays for
    /// 127.0.0.0/8, spool in the relay's working dir, the test's DNS server,
    /// MX port `remote_port`, retries every second, JSON logs.
    pub fn new(dns: SocketAddr, remote_port: u16) -> RelayConfig {
        RelayConfig {
            sections: Vec::new(),
            routes: Vec::new(),
            raw: Vec::new(),
        }
        .set("server", "listen", &toml_array(&["127.0.0.1:0"]))
        .set("server", "hostname", &toml_str("relay.test"))
        .set(
            "server",
            "relay_networks",
            &toml_array(&["127.0.0.0/8", "::1/128"]),
        )
        .set("server", "max_message_size", "10485760")
        .set("server", "max_recipients", "100")
        .set("server", "max_line_length", "1000")
        .set("server", "bare_line_ending", &toml_str("reject"))
        .set("spool", "path", &toml_str(&format!("{WORKDIR}/spool")))
        .set("spool", "min_free_space", "0")
        .set("dns", "nameservers", &toml_array(&[&dns.to_string()]))
        .set("dns", "timeout", &toml_str("2s"))
        .set("delivery", "remote_port", &remote_port.to_string())
        .set("delivery", "retry_schedule", &toml_array(&["1s"]))
        .set("delivery", "max_age", &toml_str("5d"))
        .set("delivery", "connect_timeout", &toml_str("2s"))
        .set("log", "format", &toml_str("json"))
        .set("log", "level", &toml_str("info"))
    }

    /// Sets `key = value` in `[section]` (value is a TOML literal: `"text"`, `5`, `["a"]`),
    /// replacing an earlier value of the key.
    pub fn set(mut self, section: &str, key: &str, value: &str) -> RelayConfig {
        let idx = match self.sections.iter().position(|(s, _)| s == section) {
            Some(i) => i,
            None => {
                self.sections.push((section.to_string(), Vec::new()));
                self.sections.len() - 1
            }
        };
        let entries = &mut self.sections[idx].1;
        match entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_string(),
            None => entries.push((key.to_string(), value.to_string())),
        }
        self
    }

    /// Removes `key` from `[section]` (to test the relay's default).
    pub fn unset(mut self, section: &str, key: &str) -> RelayConfig {
        for (s, entries) in &mut self.sections {
            if s == section {
                entries.retain(|(k, _)| k != key);
            }
        }
        self
    }

    /// `[delivery] retry_schedule`.
    pub fn retry_schedule(self, schedule: &[&str]) -> RelayConfig {
        self.set("delivery", "retry_schedule", &toml_array(schedule))
    }

    /// `[plugins] dir`, with the compiled-plugin cache shared by all test relays
    /// ([`crate::plugins::cache_dir`]).
    pub fn plugins_dir(self, dir: &std::path::Path) -> RelayConfig {
        self.set("plugins", "dir", &toml_str(&dir.display().to_string()))
            .set(
                "plugins",
                "cache_dir",
                &toml_str(&crate::plugins::cache_dir().display().to_string()),
            )
    }

    /// `[server] relay_networks`.
    pub fn relay_networks(self, networks: &[&str]) -> RelayConfig {
        self.set("server", "relay_networks", &toml_array(networks))
    }

    /// `[server] max_message_size` in bytes.
    pub fn max_message_size(self, bytes: u64) -> RelayConfig {
        self.set("server", "max_message_size", &bytes.to_string())
    }

    /// `[server] max_recipients`.
    pub fn max_recipients(self, n: u32) -> RelayConfig {
        self.set("server", "max_recipients", &n.to_string())
    }

    /// `[server] bare_line_ending`: "reject" or "normalize".
    pub fn bare_line_ending(self, mode: &str) -> RelayConfig {
        self.set("server", "bare_line_ending", &toml_str(mode))
    }

    /// `[server] hostname`.
    pub fn hostname(self, name: &str) -> RelayConfig {
        self.set("server", "hostname", &toml_str(name))
    }

    /// Adds a `[[route]]` sending `domain` (or "*") to `next_hop` ("ip:port").
    pub fn route(mut self, domain: &str, next_hop: &str) -> RelayConfig {
        self.routes.push((domain.to_string(), next_hop.to_string()));
        self
    }

    /// Appends raw TOML at the end of the file.
    pub fn raw(mut self, toml: &str) -> RelayConfig {
        self.raw.push(toml.to_string());
        self
    }

    /// The config file text.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for (section, entries) in &self.sections {
            out.push_str(&format!("[{section}]\n"));
            for (k, v) in entries {
                out.push_str(&format!("{k} = {v}\n"));
            }
            out.push('\n');
        }
        for (domain, next_hop) in &self.routes {
            out.push_str(&format!(
                "[[route]]\ndomain = {}\nnext_hop = {}\n\n",
                toml_str(domain),
                toml_str(next_hop)
            ));
        }
        for raw in &self.raw {
            out.push_str(raw);
            out.push('\n');
        }
        out
    }
}

/// The 1-based line of the first line of `toml` that starts with `key` (after indentation).
pub fn line_of(toml: &str, key: &str) -> Option<usize> {
    toml.lines()
        .position(|l| l.trim_start().starts_with(key))
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_is_valid_toml_with_contract_keys() {
        let text = RelayConfig::new("127.0.0.1:5353".parse().expect("addr"), 2525)
            .retry_schedule(&["1s", "2s"])
            .route("upstream.test", "127.0.0.5:2600")
            .route("*", "127.0.0.6:2600")
            .set("server", "hostname", &toml_str("other \"quoted\""))
            .to_toml();
        let v: toml::Table = text.parse().expect("valid TOML");
        assert_eq!(v["server"]["hostname"].as_str(), Some("other \"quoted\""));
        assert_eq!(v["dns"]["nameservers"][0].as_str(), Some("127.0.0.1:5353"));
        assert_eq!(v["delivery"]["remote_port"].as_integer(), Some(2525));
        assert_eq!(v["delivery"]["retry_schedule"][1].as_str(), Some("2s"));
        assert_eq!(v["route"][1]["domain"].as_str(), Some("*"));
        assert_eq!(v["spool"]["path"].as_str(), Some("@WORKDIR@/spool"));
        assert_eq!(text.matches("hostname").count(), 1);
    }

    #[test]
    fn line_of_finds_the_key() {
        let text = "[a]\nx = 1\n[delivery]\nretry_schedule = [\"5x\"]\n";
        assert_eq!(line_of(text, "retry_schedule"), Some(4));
    }
}
