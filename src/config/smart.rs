//! The smart-charging parts of the config: `[site]`, `[smart]`, `[load]`,
//! `[meter]`, `[[schedule]]` and the electrical keys of `[[charger]]`.

use std::path::PathBuf;
use std::time::Duration;

use jiff::tz::TimeZone;
use toml::{Table, Value};

use super::Reader;
use crate::meter::{self, Kind, MeterConfig, Register, RegisterMap, Table as MbTable, Transport};
use crate::smart::profile::{Electrical, RateUnit};
use crate::smart::schedule::{self, Rule, Schedule};

/// How a charger is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseMethod {
    /// A 0 A limit (the charger reports SuspendedEVSE).
    Zero,
    /// The charger's minimum current: it never sees 0 A, for chargers that
    /// end the transaction or ignore a raised limit after 0 A.
    Minimum,
    /// RemoteStopTransaction, and RemoteStartTransaction with the same id
    /// tag when charging may resume.
    StopStart,
}

/// A charger's electrical limits and quirks.
#[derive(Debug, Clone, PartialEq)]
pub struct ChargerLimits {
    pub max_current: f64,
    pub min_current: f64,
    pub electrical: Electrical,
    pub pause: PauseMethod,
}

impl Default for ChargerLimits {
    fn default() -> Self {
        ChargerLimits {
            max_current: 32.0,
            min_current: 6.0,
            electrical: Electrical {
                unit: RateUnit::Amps,
                phases: 3,
                voltage: 230.0,
            },
            pause: PauseMethod::Zero,
        }
    }
}

/// `[smart]`: where the gateway's profiles sit on every charger.
#[derive(Debug, Clone, PartialEq)]
pub struct SmartConfig {
    /// Stack level of the standing profile (schedule, fail-safe); the
    /// live profile (load share, pause) sits one above.
    pub stack_level: u32,
    /// Profile id of the standing profile; the live one is this + 1.
    pub profile_id: i64,
    pub purpose: String,
    /// How long a live profile holds if the gateway stops refreshing it.
    pub lease: Duration,
    /// Smallest change (A) worth a new profile.
    pub hysteresis: f64,
    /// Least time between two raises of one charger's limit.
    pub min_interval: Duration,
    /// How long a session keeps its turn when not everyone fits.
    pub turn: Duration,
}

/// `[load]`: site load management; present only when configured.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadConfig {
    /// The grid connection's fuse, amperes per phase.
    pub fuse: f64,
    pub margin: f64,
    /// What every charger falls back to when the meter (or the gateway) is gone.
    pub safe_current: f64,
    /// Meter silent this long: fall back.
    pub meter_timeout: Duration,
}

/// A schedule and the chargers it applies to (`*`: all).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    pub schedule: Schedule,
    pub chargers: Vec<String>,
}

impl ScheduleConfig {
    pub fn applies_to(&self, id: &str) -> bool {
        self.chargers.iter().any(|c| c == "*" || c == id)
    }
}

/// Everything smart charging reads from the config.
#[derive(Debug, Clone)]
pub struct Smart {
    pub tz: TimeZone,
    pub smart: SmartConfig,
    pub load: Option<LoadConfig>,
    pub meter: Option<MeterConfig>,
    pub schedules: Vec<ScheduleConfig>,
}

impl Smart {
    /// The schedule of charger `id`: the first one that names it.
    pub fn schedule_for(&self, id: &str) -> Option<&Schedule> {
        self.schedules
            .iter()
            .find(|s| s.applies_to(id))
            .map(|s| &s.schedule)
    }
}

fn float(
    r: &mut Reader,
    t: Option<&Table>,
    section: &str,
    key: &str,
    default: f64,
    min: f64,
    max: f64,
) -> f64 {
    match t.and_then(|t| t.get(key)) {
        None => default,
        Some(Value::Integer(i)) if (min..=max).contains(&(*i as f64)) => *i as f64,
        Some(Value::Float(f)) if (min..=max).contains(f) => *f,
        Some(v) => {
            r.problem(
                &format!("{section}.{key}"),
                format!("expected a number from {min} to {max}, found {v}"),
            );
            default
        }
    }
}

pub(super) fn read(root: &Table, r: &mut Reader) -> Smart {
    let site = r.table(root, "site");
    if let Some(s) = site {
        r.unknown_keys(s, "site", &["timezone"]);
    }
    let tz = match r.string(site, "site", "timezone", None) {
        None => TimeZone::try_system().unwrap_or(TimeZone::UTC),
        Some(name) => TimeZone::get(&name).unwrap_or_else(|_| {
            r.problem(
                "site.timezone",
                format!("expected an IANA time zone like \"Europe/Berlin\", found {name:?}"),
            );
            TimeZone::UTC
        }),
    };

    let s = r.table(root, "smart");
    if let Some(s) = s {
        r.unknown_keys(
            s,
            "smart",
            &[
                "stack_level",
                "profile_id",
                "purpose",
                "lease_secs",
                "hysteresis_a",
                "min_interval_secs",
                "turn_secs",
            ],
        );
    }
    let purpose = r
        .string(s, "smart", "purpose", Some("ChargePointMaxProfile"))
        .unwrap_or_default();
    if !["ChargePointMaxProfile", "TxDefaultProfile"].contains(&purpose.as_str()) {
        r.problem(
            "smart.purpose",
            format!(
                "expected \"ChargePointMaxProfile\" or \"TxDefaultProfile\", found {purpose:?}"
            ),
        );
    }
    let smart = SmartConfig {
        stack_level: r.int(s, "smart", "stack_level", 8, 0, 98) as u32,
        profile_id: r.int(s, "smart", "profile_id", 870_001, 1, i32::MAX as i64 - 1),
        purpose,
        lease: r.secs(s, "smart", "lease_secs", 300, 30, 86_400),
        hysteresis: float(r, s, "smart", "hysteresis_a", 1.0, 0.1, 32.0),
        min_interval: r.secs(s, "smart", "min_interval_secs", 30, 0, 3600),
        turn: r.secs(s, "smart", "turn_secs", 900, 60, 86_400),
    };

    let l = r.table(root, "load");
    let load = l.map(|l| {
        r.unknown_keys(
            l,
            "load",
            &["fuse_a", "margin_a", "safe_current_a", "meter_timeout_secs"],
        );
        if !l.contains_key("fuse_a") {
            r.problem(
                "load.fuse_a",
                "expected the grid connection's fuse in amperes per phase, e.g. 63",
            );
        }
        LoadConfig {
            fuse: float(r, Some(l), "load", "fuse_a", 63.0, 6.0, 10_000.0),
            margin: float(r, Some(l), "load", "margin_a", 2.0, 0.0, 1_000.0),
            safe_current: float(r, Some(l), "load", "safe_current_a", 6.0, 0.0, 1_000.0),
            meter_timeout: r.secs(Some(l), "load", "meter_timeout_secs", 30, 2, 3600),
        }
    });

    let meter = r.table(root, "meter").and_then(|m| read_meter(m, r));
    if load.is_some() && meter.is_none() && !root.contains_key("meter") {
        r.problem(
            "meter",
            "expected a [meter] section: load management needs the site meter",
        );
    }
    let schedules = read_schedules(root, r);
    Smart {
        tz,
        smart,
        load,
        meter,
        schedules,
    }
}

fn read_meter(m: &Table, r: &mut Reader) -> Option<MeterConfig> {
    r.unknown_keys(
        m,
        "meter",
        &[
            "transport",
            "address",
            "device",
            "baud",
            "parity",
            "stop_bits",
            "unit_id",
            "model",
            "poll_ms",
            "timeout_ms",
            "register",
        ],
    );
    let transport = r
        .string(Some(m), "meter", "transport", Some("tcp"))
        .unwrap_or_default();
    let transport = match transport.as_str() {
        "tcp" => {
            let a = r
                .string(Some(m), "meter", "address", None)
                .unwrap_or_default();
            // A bare host gets Modbus's port.
            let with_port = if a.contains(':') {
                a.clone()
            } else {
                format!("{a}:502")
            };
            match with_port.parse() {
                Ok(addr) => Transport::Tcp(addr),
                Err(_) => {
                    r.problem("meter.address", format!("expected the meter's IP address and port, e.g. \"192.168.1.50:502\", found {a:?}"));
                    return None;
                }
            }
        }
        "rtu" => {
            let Some(device) = r.string(Some(m), "meter", "device", None) else {
                r.problem(
                    "meter.device",
                    "expected the serial device, e.g. \"/dev/ttyUSB0\"",
                );
                return None;
            };
            let parity = r
                .string(Some(m), "meter", "parity", Some("N"))
                .unwrap_or_default();
            let parity = match parity.as_str() {
                "N" | "E" | "O" => parity.chars().next().unwrap_or('N'),
                _ => {
                    r.problem(
                        "meter.parity",
                        format!("expected \"N\", \"E\" or \"O\", found {parity:?}"),
                    );
                    'N'
                }
            };
            Transport::Rtu {
                device: PathBuf::from(device),
                baud: r.int(Some(m), "meter", "baud", 9600, 1200, 115_200) as u32,
                parity,
                stop_bits: r.int(Some(m), "meter", "stop_bits", 1, 1, 2) as u8,
            }
        }
        other => {
            r.problem(
                "meter.transport",
                format!("expected \"tcp\" or \"rtu\", found {other:?}"),
            );
            return None;
        }
    };
    let model = r
        .string(Some(m), "meter", "model", Some("sdm630"))
        .unwrap_or_default();
    let map = if model == "custom" {
        read_registers(m, r)?
    } else {
        match meter::preset(&model) {
            Some(p) => p,
            None => {
                r.problem(
                    "meter.model",
                    format!(
                        "expected one of {} or \"custom\", found {model:?}",
                        meter::PRESETS.join(", ")
                    ),
                );
                return None;
            }
        }
    };
    Some(MeterConfig {
        transport,
        unit_id: r.int(Some(m), "meter", "unit_id", 1, 0, 247) as u8,
        model,
        map,
        poll: Duration::from_millis(r.int(Some(m), "meter", "poll_ms", 1000, 100, 60_000) as u64),
        timeout: Duration::from_millis(
            r.int(Some(m), "meter", "timeout_ms", 1000, 50, 30_000) as u64
        ),
    })
}

const QUANTITIES: &[&str] = &[
    "current_l1",
    "current_l2",
    "current_l3",
    "power",
    "energy_import",
];

fn read_registers(m: &Table, r: &mut Reader) -> Option<RegisterMap> {
    let list = r.entries(
        m,
        "register",
        "meter.register",
        Some("expected [[meter.register]] entries when model = \"custom\""),
    )?;
    let mut found: [Option<Register>; 5] = [None; 5];
    for (section, t) in list {
        r.unknown_keys(
            t,
            &section,
            &[
                "quantity",
                "table",
                "address",
                "type",
                "word_order",
                "scale",
            ],
        );
        let q = r
            .string(Some(t), &section, "quantity", None)
            .unwrap_or_default();
        let Some(slot) = QUANTITIES.iter().position(|x| *x == q) else {
            r.problem(
                &format!("{section}.quantity"),
                format!("expected one of {}, found {q:?}", QUANTITIES.join(", ")),
            );
            continue;
        };
        let table = match r
            .string(Some(t), &section, "table", Some("input"))
            .as_deref()
        {
            Some("holding") => MbTable::Holding,
            Some("input") => MbTable::Input,
            other => {
                r.problem(
                    &format!("{section}.table"),
                    format!("expected \"input\" or \"holding\", found {other:?}"),
                );
                MbTable::Input
            }
        };
        let ty = r
            .string(Some(t), &section, "type", Some("f32"))
            .unwrap_or_default();
        let kind = Kind::parse(&ty).unwrap_or_else(|| {
            r.problem(
                &format!("{section}.type"),
                format!("expected f32, u16, i16, u32, i32 or u64, found {ty:?}"),
            );
            Kind::F32
        });
        let order = r
            .string(Some(t), &section, "word_order", Some("high_first"))
            .unwrap_or_default();
        if order != "high_first" && order != "low_first" {
            r.problem(
                &format!("{section}.word_order"),
                format!("expected \"high_first\" or \"low_first\", found {order:?}"),
            );
        }
        found[slot] = Some(Register {
            table,
            address: r.int(Some(t), &section, "address", 0, 0, 65_535) as u16,
            kind,
            high_word_first: order != "low_first",
            scale: float(r, Some(t), &section, "scale", 1.0, -1e9, 1e9),
        });
    }
    let mut current = Vec::new();
    for (i, q) in QUANTITIES[..3].iter().enumerate() {
        match found[i] {
            Some(reg) => current.push(reg),
            None => r.problem(
                "meter.register",
                format!("expected an entry with quantity = \"{q}\""),
            ),
        }
    }
    Some(RegisterMap {
        current: current.try_into().ok()?,
        power: found[3],
        energy_import: found[4],
    })
}

fn read_schedules(root: &Table, r: &mut Reader) -> Vec<ScheduleConfig> {
    let mut out = Vec::new();
    let list = r
        .entries(root, "schedule", "schedule", None)
        .unwrap_or_default();
    for (i, (section, t)) in list.into_iter().enumerate() {
        r.unknown_keys(t, &section, &["name", "chargers", "window"]);
        let name = r
            .string(
                Some(t),
                &section,
                "name",
                Some(&format!("schedule {}", i + 1)),
            )
            .unwrap_or_default();
        let chargers: Vec<String> = match t.get("chargers") {
            Some(Value::Array(a)) if a.iter().all(Value::is_str) && !a.is_empty() => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(Value::String(s)) if s == "*" => vec!["*".into()],
            _ => {
                r.problem(
                    &format!("{section}.chargers"),
                    "expected a list of charger ids, e.g. [\"CP-1\", \"CP-2\"], or \"*\" for all",
                );
                continue;
            }
        };
        let mut rules = Vec::new();
        let windows = r.entries(
            t,
            "window",
            &format!("{section}.window"),
            Some("expected [[schedule.window]] entries with days, from and to"),
        );
        for (ws, w) in windows.unwrap_or_default() {
            r.unknown_keys(w, &ws, &["days", "from", "to", "max_current_a"]);
            let days_s = r
                .string(Some(w), &ws, "days", Some("daily"))
                .unwrap_or_default();
            let days = schedule::parse_days(&days_s).unwrap_or_else(|| {
                r.problem(
                    &format!("{ws}.days"),
                    format!(
                        "expected days like \"mon-fri\", \"sat,sun\", \"daily\", found {days_s:?}"
                    ),
                );
                [true; 7]
            });
            let mut time = |key: &str, default: &str| {
                let s = r
                    .string(Some(w), &ws, key, Some(default))
                    .unwrap_or_default();
                schedule::parse_minute(&s).unwrap_or_else(|| {
                    r.problem(
                        &format!("{ws}.{key}"),
                        format!("expected a time \"HH:MM\" (00:00 to 24:00), found {s:?}"),
                    );
                    0
                })
            };
            let from = time("from", "00:00");
            let to = time("to", "24:00");
            let max_current = w
                .contains_key("max_current_a")
                .then(|| float(r, Some(w), &ws, "max_current_a", 32.0, 0.0, 1000.0));
            rules.push(Rule {
                days,
                from,
                to,
                max_current,
            });
        }
        out.push(ScheduleConfig {
            schedule: Schedule { name, rules },
            chargers,
        });
    }
    out
}

/// The electrical keys of one `[[charger]]`.
pub(super) const CHARGER_KEYS: &[&str] = &[
    "max_current_a",
    "min_current_a",
    "phases",
    "voltage",
    "rate_unit",
    "pause",
];

pub(super) fn read_charger_limits(t: &Table, section: &str, r: &mut Reader) -> ChargerLimits {
    let d = ChargerLimits::default();
    let unit = match r
        .string(Some(t), section, "rate_unit", Some("A"))
        .as_deref()
    {
        Some("W") => RateUnit::Watts,
        Some("A") => RateUnit::Amps,
        other => {
            r.problem(
                &format!("{section}.rate_unit"),
                format!("expected \"A\" or \"W\", found {other:?}"),
            );
            RateUnit::Amps
        }
    };
    let pause = match r.string(Some(t), section, "pause", Some("zero")).as_deref() {
        Some("zero") => PauseMethod::Zero,
        Some("minimum") => PauseMethod::Minimum,
        Some("stop") => PauseMethod::StopStart,
        other => {
            r.problem(&format!("{section}.pause"), format!("expected \"zero\" (0 A profile), \"minimum\" (the minimum current) or \"stop\" (stop and restart the transaction), found {other:?}"));
            PauseMethod::Zero
        }
    };
    let max_current = float(
        r,
        Some(t),
        section,
        "max_current_a",
        d.max_current,
        6.0,
        1000.0,
    );
    let min_current = float(
        r,
        Some(t),
        section,
        "min_current_a",
        d.min_current,
        0.0,
        1000.0,
    );
    if min_current > max_current {
        r.problem(
            &format!("{section}.min_current_a"),
            format!("expected at most max_current_a ({max_current}), found {min_current}"),
        );
    }
    ChargerLimits {
        max_current,
        min_current,
        electrical: Electrical {
            unit,
            phases: r.int(Some(t), section, "phases", 3, 1, 3) as u8,
            voltage: float(r, Some(t), section, "voltage", 230.0, 100.0, 480.0),
        },
        pause,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, PauseMethod};
    use crate::meter::{Table, Transport};

    #[test]
    fn a_whole_smart_charging_config_is_read() {
        let c = Config::parse(
            r#"
            [site]
            timezone = "Europe/Vienna"
            [smart]
            stack_level = 5
            [load]
            fuse_a = 35
            safe_current_a = 10
            [meter]
            transport = "rtu"
            device = "/dev/ttyUSB0"
            baud = 19200
            parity = "E"
            model = "custom"
            [[meter.register]]
            quantity = "current_l1"
            table = "holding"
            address = 12
            type = "i32"
            word_order = "low_first"
            scale = 0.001
            [[meter.register]]
            quantity = "current_l2"
            address = 14
            [[meter.register]]
            quantity = "current_l3"
            address = 16
            [[schedule]]
            name = "off-peak"
            chargers = ["CP-1"]
            [[schedule.window]]
            days = "mon-fri"
            from = "22:00"
            to = "06:00"
            max_current_a = 16
            [[charger]]
            id = "CP-1"
            rate_unit = "W"
            pause = "minimum"
            max_current_a = 16
            "#,
            "site.toml",
        )
        .unwrap();
        let s = &c.smart;
        assert_eq!(s.smart.stack_level, 5);
        assert_eq!(s.load.as_ref().unwrap().fuse, 35.0);
        let m = s.meter.as_ref().unwrap();
        assert!(matches!(
            &m.transport,
            Transport::Rtu {
                baud: 19200,
                parity: 'E',
                ..
            }
        ));
        assert_eq!(m.map.current[0].table, Table::Holding);
        assert!(!m.map.current[0].high_word_first);
        assert_eq!(m.map.current[0].scale, 0.001);
        assert!(s.schedule_for("CP-1").is_some() && s.schedule_for("CP-2").is_none());
        let l = c.limits("CP-1");
        assert_eq!((l.max_current, l.pause), (16.0, PauseMethod::Minimum));
        assert_eq!(c.limits("unknown").max_current, 32.0);
    }

    #[test]
    fn smart_charging_mistakes_name_their_keys() {
        let e = Config::parse(
            r#"
            [site]
            timezone = "Mars/Olympus"
            [load]
            margin_a = 2
            [[schedule]]
            chargers = ["CP-9"]
            [[schedule.window]]
            days = "someday"
            from = "25:00"
            [[schedule]]
            chargers = ["*"]
            [[charger]]
            id = "CP-1"
            pause = "sometimes"
            rate_unit = "kW"
            "#,
            "site.toml",
        )
        .unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "site.timezone",
            "load.fuse_a",
            "meter",
            "schedule[0].window[0].days",
            "schedule[0].window[0].from",
            "schedule[0].chargers",
            "schedule[1].window",
            "charger[0].pause",
            "charger[0].rate_unit",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        let e = Config::parse(
            "[meter]\naddress = \"10.0.0.5\"\nmodel = \"sdm999\"\n",
            "m.toml",
        )
        .unwrap_err();
        assert_eq!(e.problems[0].key, "meter.model");
        assert!(e.problems[0].expected.contains("sdm630"), "{e}");
        let c = Config::parse("[meter]\naddress = \"10.0.0.5\"\n", "m.toml").unwrap();
        assert_eq!(
            c.smart.meter.unwrap().transport,
            Transport::Tcp("10.0.0.5:502".parse().unwrap())
        );
    }
}
