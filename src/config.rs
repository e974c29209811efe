//! Configuration: TOML in, a validated `Config` out, before any socket opens.
//! Every problem is reported at once, each naming the file, the key and
//! what was expected, so an installer fixes the file in one go.

use std::collections::BTreeMap;
use std::fmt;

use toml::Table;

mod chargers;
mod mirror;
mod mqtt;
mod reader;
mod sections;
mod smart;
pub use self::chargers::{
    check_charger_id, check_ws_url, BadChargerId, BadUrl, ChargerConfig, IdProblem, UpstreamConfig,
};
pub use self::mirror::{MirrorConfig, CSMS_CALLS};
pub use self::mqtt::MqttConfig;
use self::reader::Reader;
pub use self::sections::{
    ActionsSection, ApiSection, DiagnosticsSection, GatewaySection, JournalSection, OcppSection,
    OfflineMode, OfflineSection, TlsListen,
};
pub use self::smart::{ChargerLimits, LoadConfig, PauseMethod, ScheduleConfig, Smart, SmartConfig};

/// The example config, which is also what `chargegate` runs when no config
/// file is given.
pub const EMBEDDED: &str = include_str!("../config/chargegate.toml");
/// Name used for the embedded config in messages.
pub const EMBEDDED_NAME: &str = "(embedded default config)";

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub expected: String,
}

/// All problems found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {n} problem{}",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  {}: {}: {}", self.file, p.key, p.expected)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The whole, validated configuration: one struct per section of the file.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: GatewaySection,
    pub ocpp: OcppSection,
    pub offline: OfflineSection,
    /// The cloud; none: standalone.
    pub upstream: Option<UpstreamConfig>,
    pub api: ApiSection,
    pub actions: ActionsSection,
    pub diagnostics: DiagnosticsSection,
    pub journal: JournalSection,
    pub chargers: BTreeMap<String, ChargerConfig>,
    /// Schedules, load management, the meter.
    pub smart: Smart,
    /// The MQTT broker (Home Assistant); none: no MQTT.
    pub mqtt: Option<MqttConfig>,
    /// Second backends (`[[mirror]]`).
    pub mirrors: Vec<MirrorConfig>,
    /// Deprecated keys the file still uses, each with what to write
    /// instead (`file: key: …`): printed by check-config and at start.
    pub warnings: Vec<String>,
}

/// The config in force: replaced on SIGHUP by [`Config::with_live_parts`].
/// New connections, the API and smart charging read it; a running session
/// keeps the config it started with.
#[derive(Clone)]
pub struct Live(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Config>>>);

impl Live {
    pub fn new(cfg: std::sync::Arc<Config>) -> Live {
        Live(std::sync::Arc::new(std::sync::RwLock::new(cfg)))
    }

    /// The config now.
    pub fn get(&self) -> std::sync::Arc<Config> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, cfg: Config) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(cfg);
    }
}

impl Config {
    /// The sections of `new` that differ from `self` and only apply after a
    /// restart (listeners, storage, the cloud, timeouts, the meter).
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        // What applies live (`with_live_parts`) is left out.
        let ocpp = |c: &Config| OcppSection {
            allow_unknown: false,
            ..c.ocpp.clone()
        };
        let changed = [
            ("[gateway]", self.gateway != new.gateway),
            ("[ocpp]", ocpp(self) != ocpp(new)),
            ("[offline]", self.offline != new.offline),
            ("[upstream]", self.upstream != new.upstream),
            ("[[mirror]]", self.mirrors != new.mirrors),
            ("[api]", self.api != new.api),
            ("[actions]", self.actions != new.actions),
            ("[diagnostics]", self.diagnostics != new.diagnostics),
            ("[journal]", self.journal != new.journal),
            ("[meter]", self.smart.meter != new.smart.meter),
            ("[mqtt]", self.mqtt != new.mqtt),
        ];
        changed
            .into_iter()
            .filter_map(|(name, differs)| differs.then_some(name))
            .collect()
    }

    /// `self` with what applies live taken from `new`: the chargers (ids,
    /// passwords, limits), whether unknown chargers may connect, schedules,
    /// `[site]`, `[smart]` and `[load]`.
    pub fn with_live_parts(&self, new: &Config) -> Config {
        let mut c = self.clone();
        c.chargers = new.chargers.clone();
        c.ocpp.allow_unknown = new.ocpp.allow_unknown;
        let meter = c.smart.meter.take();
        c.smart = new.smart.clone();
        c.smart.meter = meter;
        c
    }

    /// The offline mode for chargers speaking `proto`.
    pub fn offline_mode_for(&self, proto: crate::ocpp::Protocol) -> OfflineMode {
        match proto {
            crate::ocpp::Protocol::Ocpp16 => self.offline.mode,
            crate::ocpp::Protocol::Ocpp201 => self.offline.mode_201,
        }
    }

    /// Whether the gateway answers a charger speaking `proto` itself when
    /// it has to (standalone, cloud away or silent): always for 1.6; for
    /// 2.0.1 standalone, and with a cloud only in `hold` mode (else the
    /// charger's calls wait for the cloud, however late).
    pub fn answers_itself(&self, proto: crate::ocpp::Protocol, standalone: bool) -> bool {
        proto == crate::ocpp::Protocol::Ocpp16
            || standalone
            || self.offline.mode_201 == OfflineMode::Hold
    }

    /// A charger's electrical limits (defaults for one not in the config).
    pub fn limits(&self, id: &str) -> ChargerLimits {
        self.chargers
            .get(id)
            .map(|c| c.limits.clone())
            .unwrap_or_default()
    }
}

const TOP: &[&str] = &[
    "gateway",
    "ocpp",
    "offline",
    "upstream",
    "api",
    "journal",
    "diagnostics",
    "charger",
    "site",
    "smart",
    "load",
    "meter",
    "schedule",
    "mqtt",
    "mirror",
    "actions",
];

impl Config {
    /// Parse and validate a config file's text. `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let root: Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
            file: file.to_string(),
            problems: vec![Problem {
                key: "(syntax)".into(),
                expected: e.to_string().trim().replace('\n', " "),
            }],
        })?;
        let mut problems = Vec::new();
        let mut r = Reader {
            problems: &mut problems,
            warnings: Vec::new(),
        };
        let mut cfg = Self::read(&root, &mut r);
        cfg.warnings = r
            .warnings
            .into_iter()
            .map(|w| format!("{file}: {}: {}", w.key, w.expected))
            .collect();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError {
                file: file.to_string(),
                problems,
            })
        }
    }

    /// Read a config file from disk.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            problems: vec![Problem {
                key: "(file)".into(),
                expected: format!("a readable file: {e}"),
            }],
        })?;
        Self::parse(&text, &file)
    }

    /// The embedded default config.
    pub fn embedded() -> Config {
        Self::parse(EMBEDDED, EMBEDDED_NAME)
            .expect("the embedded config is valid (a unit test checks it)")
    }

    fn read(root: &Table, r: &mut Reader) -> Config {
        r.unknown_keys(root, "", TOP);
        let gateway = sections::read_gateway(root, r);
        let upstream = r
            .table(root, "upstream")
            .and_then(|u| chargers::read_upstream(u, r));
        let ocpp = sections::read_ocpp(root, r, upstream.is_some());
        let offline = sections::read_offline(root, r, ocpp.heartbeat_interval);
        let mirrors = mirror::read(root, r, upstream.as_ref().map(|u| u.url.as_str()));
        let api = sections::read_api(root, r);
        let actions = sections::read_actions(root, r);
        let journal = sections::read_journal(root, r);
        let diagnostics = sections::read_diagnostics(root, r, ocpp.listen);
        let chargers = chargers::read_chargers(root, r, ocpp.tls.as_ref());
        let smart = smart::read(root, r);
        let mqtt = r
            .table(root, "mqtt")
            .and_then(|m| mqtt::read(m, &gateway.id, r));
        for (i, s) in smart.schedules.iter().enumerate() {
            for c in &s.chargers {
                if c != "*" && !chargers.contains_key(c) && !ocpp.allow_unknown {
                    r.problem(
                        &format!("schedule[{i}].chargers"),
                        format!("expected ids of [[charger]] entries (or \"*\"); {c:?} is not one"),
                    );
                }
            }
        }
        Config {
            gateway,
            ocpp,
            offline,
            upstream,
            api,
            actions,
            diagnostics,
            journal,
            chargers,
            smart,
            mqtt,
            mirrors,
            warnings: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_config_is_valid_and_standalone() {
        let c = Config::embedded();
        assert!(c.upstream.is_none());
        use crate::ocpp::Protocol::*;
        assert_eq!(
            (c.offline_mode_for(Ocpp16), c.offline_mode_for(Ocpp201)),
            (OfflineMode::Hold, OfflineMode::Disconnect),
            "2.0.1's default is what its Part 4 §6.3 asks"
        );
        assert!(c.api.listen.ip().is_loopback());
    }

    #[test]
    fn what_needs_a_restart_is_a_comparison_of_sections() {
        let base = "[ocpp]\nallow_unknown_chargers = false\n[api]\nhost_names = [\"a.example\"]\n";
        let old = Config::parse(base, "a.toml").unwrap();
        let same = |text: &str| old.restart_needed(&Config::parse(text, "b.toml").unwrap());
        assert!(same(base).is_empty());
        assert!(
            same("[ocpp]\nallow_unknown_chargers = true\n[api]\nhost_names = [\"a.example\"]\n")
                .is_empty(),
            "applies live"
        );
        assert_eq!(
            same("[ocpp]\nallow_unknown_chargers = false\nlisten = \"127.0.0.1:9999\"\n[api]\nhost_names = [\"a.example\"]\n"),
            vec!["[ocpp]", "[diagnostics]"],
            "the upload port follows the OCPP port"
        );
        assert_eq!(same("[api]\nhost_names = [\"b.example\"]\n"), vec!["[api]"]);
        assert_eq!(
            same(
                "[ocpp]\n[api]\nhost_names = [\"a.example\"]\n[offline]\nmode_ocpp201 = \"hold\"\n"
            ),
            vec!["[offline]"]
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
            bogus = 1
            [ocpp]
            listen = "nowhere"
            max_message_size = 5
            [offline]
            authorize = "maybe"
            mode_ocpp201 = "keep"
            [upstream]
            url = "http://cloud"
            [api]
            listen = "0.0.0.0:8180"
            [[charger]]
            id = "CP/1"
            [[charger]]
            password = "x"
        "#;
        let e = Config::parse(text, "site.toml").unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "bogus",
            "ocpp.listen",
            "ocpp.max_message_size",
            "offline.authorize",
            "offline.mode_ocpp201",
            "upstream.url",
            "api.token",
            "charger[0].id",
            "charger[1].id",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        let shown = e.to_string();
        assert!(
            shown.contains("site.toml: ocpp.listen: expected an address"),
            "{shown}"
        );
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let e = Config::parse("[ocpp\nlisten=", "bad.toml").unwrap_err();
        assert_eq!(e.file, "bad.toml");
        assert_eq!(e.problems[0].key, "(syntax)");
    }

    #[test]
    fn chargers_and_upstream_are_read() {
        let c = Config::parse(
            r#"
            [upstream]
            url = "wss://csms.example.com/ocpp/"
            [[charger]]
            id = "CP-1"
            password = "0123456789abcdef"
            "#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.upstream.unwrap().url, "wss://csms.example.com/ocpp");
        assert_eq!(
            c.chargers["CP-1"].password.as_deref(),
            Some("0123456789abcdef")
        );
        assert!(!c.ocpp.allow_unknown);
    }
}

#[cfg(test)]
mod example_defaults {
    use super::*;

    /// Every key the example config (the embedded default) sets to
    /// something other than the code's default says so in the comment
    /// just above it ("Default: …"), so the example and the code cannot
    /// silently disagree.
    #[test]
    fn the_example_names_every_value_that_differs_from_the_default() {
        let text = include_str!("../config/chargegate.toml");
        let full = format!("{:?}", Config::parse(text, "example").expect("valid"));
        let lines: Vec<&str> = text.lines().collect();
        let mut undocumented = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let l = line.trim();
            if l.starts_with('#') || l.starts_with('[') || !l.contains('=') {
                continue;
            }
            let without: String = lines
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, l)| format!("{l}\n"))
                .collect();
            let Ok(c) = Config::parse(&without, "example") else {
                continue; // a required key: no default to differ from
            };
            if format!("{c:?}") == full {
                continue;
            }
            let comment: String = lines[..i]
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with('#'))
                .map(|l| l.to_string())
                .collect();
            if !comment.contains("Default:") {
                undocumented.push(l.to_string());
            }
        }
        assert!(
            undocumented.is_empty(),
            "differs from the code's default without saying so: {undocumented:#?}"
        );
    }
}

#[cfg(test)]
mod moved_keys {
    use super::*;

    #[test]
    fn one_key_per_meaning_and_old_keys_still_work_with_a_warning() {
        let new = "[upstream]\nurl = \"ws://c\"\nanswer_timeout_secs = 7\n[ocpp]\ncall_timeout_secs = 12\n[actions]\ndefault_id_tag = \"STAFF\"\nforce_stop_wait_secs = 9\n";
        let c = Config::parse(new, "t.toml").unwrap();
        assert_eq!(
            (
                c.ocpp.answer_timeout.as_secs(),
                c.ocpp.call_timeout.as_secs()
            ),
            (7, 12)
        );
        assert_eq!(
            (
                c.actions.default_id_tag.as_str(),
                c.actions.force_stop_wait.as_secs()
            ),
            ("STAFF", 9)
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);

        let old = "[upstream]\nurl = \"ws://c\"\n[ocpp]\ncall_timeout_secs = 12\n[api]\ndefault_id_tag = \"OLD\"\nforce_stop_wait_secs = 8\n";
        let c = Config::parse(old, "t.toml").unwrap();
        assert_eq!(
            (
                c.ocpp.answer_timeout.as_secs(),
                c.ocpp.call_timeout.as_secs()
            ),
            (12, 12),
            "the old meaning kept"
        );
        assert_eq!(
            (
                c.actions.default_id_tag.as_str(),
                c.actions.force_stop_wait.as_secs()
            ),
            ("OLD", 8)
        );
        let w = c.warnings.join("\n");
        for key in [
            "t.toml: ocpp.call_timeout_secs:",
            "t.toml: api.default_id_tag: deprecated: move it to [actions]",
            "t.toml: api.force_stop_wait_secs:",
        ] {
            assert!(w.contains(key), "{key} not in {w}");
        }
        // Both: the new place wins, the old is said to be ignored.
        let both = "[api]\ndefault_id_tag = \"OLD\"\n[actions]\ndefault_id_tag = \"NEW\"\n";
        let c = Config::parse(both, "t.toml").unwrap();
        assert_eq!(c.actions.default_id_tag, "NEW");
        assert!(c.warnings[0].contains("ignored"), "{:?}", c.warnings);
        // Standalone, call_timeout_secs has one meaning: no warning.
        let alone = Config::parse("[ocpp]\ncall_timeout_secs = 5\n", "t").unwrap();
        assert!(alone.warnings.is_empty());
    }
}
