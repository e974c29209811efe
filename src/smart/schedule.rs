//! Weekly charging windows in the site's time zone, and the pure question
//! "what may charger X draw at instant t". Windows are civil times
//! (22:00–06:00 means 22:00 on the wall clock, summer or winter), so every
//! computation goes through the time zone; DST gaps and folds fall out of
//! comparing civil times.

use jiff::civil::{DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// Minutes since local midnight; 1440 is "24:00", the end of the day.
pub type Minute = u16;

/// One weekly rule: on `days`, charging is allowed from `from` to `to`
/// (local time). `to <= from` means the window ends the next day.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Monday first.
    pub days: [bool; 7],
    pub from: Minute,
    pub to: Minute,
    /// Current cap inside the window; `None`: the charger's own maximum.
    pub max_current: Option<f64>,
}

/// A named set of rules. Outside every window the limit is 0 A.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub name: String,
    pub rules: Vec<Rule>,
}

/// What a schedule allows at an instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Allowed {
    /// Outside every window.
    Closed,
    /// Inside a window, with its cap (`None`: uncapped).
    Open(Option<f64>),
}

impl Allowed {
    /// The cap in amperes, given the charger's own maximum.
    pub fn amps(self, charger_max: f64) -> f64 {
        match self {
            Allowed::Closed => 0.0,
            Allowed::Open(cap) => cap.map_or(charger_max, |c| c.min(charger_max)),
        }
    }
}

fn civil(m: Minute) -> Time {
    let m = m.min(1439);
    Time::new((m / 60) as i8, (m % 60) as i8, 0, 0).expect("minute of day is a valid time")
}

impl Rule {
    /// Start and end (civil) of this rule's window that begins on `day`.
    fn window(&self, day: jiff::civil::Date) -> (DateTime, DateTime) {
        let start = day.to_datetime(civil(self.from));
        let end_day = if self.to <= self.from {
            day.tomorrow().unwrap_or(day)
        } else {
            day
        };
        let end = if self.to >= 1440 {
            end_day
                .tomorrow()
                .unwrap_or(end_day)
                .to_datetime(Time::midnight())
        } else {
            end_day.to_datetime(civil(self.to))
        };
        (start, end)
    }

    fn on(&self, day: Weekday) -> bool {
        self.days[day.to_monday_zero_offset() as usize]
    }
}

impl Schedule {
    /// What the schedule allows at `t` in time zone `tz`. Overlapping
    /// windows: the most generous cap wins.
    pub fn allowed_at(&self, t: Timestamp, tz: &TimeZone) -> Allowed {
        let now = t.to_zoned_datetime(tz.clone()).datetime();
        let today = now.date();
        let mut best: Option<Option<f64>> = None;
        for day in [today.yesterday().unwrap_or(today), today] {
            for r in self.rules.iter().filter(|r| r.on(day.weekday())) {
                let (start, end) = r.window(day);
                if start <= now && now < end {
                    best = Some(match (best, r.max_current) {
                        (None, cap) => cap,
                        (Some(None), _) | (_, None) => None,
                        (Some(Some(a)), Some(b)) => Some(a.max(b)),
                    });
                }
            }
        }
        best.map_or(Allowed::Closed, Allowed::Open)
    }

    /// The instants in `(from, to)` where what the schedule allows changes,
    /// each with what holds from there on; the first entry is `from` itself.
    pub fn steps(
        &self,
        from: Timestamp,
        to: Timestamp,
        tz: &TimeZone,
    ) -> Vec<(Timestamp, Allowed)> {
        let first = from.to_zoned_datetime(tz.clone()).date();
        let last = to.to_zoned_datetime(tz.clone()).date();
        let mut edges = Vec::new();
        let mut day = first.yesterday().unwrap_or(first);
        while day <= last {
            for r in self.rules.iter().filter(|r| r.on(day.weekday())) {
                let (start, end) = r.window(day);
                for edge in [start, end] {
                    // A window edge inside a DST gap happens when the clock
                    // jumps past it ("compatible": the later instant).
                    if let Ok(z) = tz.to_ambiguous_zoned_datetime(edge).compatible() {
                        let ts = z.timestamp();
                        if ts > from && ts < to {
                            edges.push(ts);
                        }
                    }
                }
            }
            match day.tomorrow() {
                Ok(d) => day = d,
                Err(_) => break,
            }
        }
        edges.sort();
        edges.dedup();
        let mut out = vec![(from, self.allowed_at(from, tz))];
        for ts in edges {
            let a = self.allowed_at(ts, tz);
            if out.last().map(|(_, prev)| *prev) != Some(a) {
                out.push((ts, a));
            }
        }
        out
    }
}

/// The instant the local week containing `t` began (Monday 00:00).
pub fn week_start(t: Timestamp, tz: &TimeZone) -> Timestamp {
    let local = t.to_zoned_datetime(tz.clone()).date();
    let monday = local
        .checked_sub(jiff::Span::new().days(local.weekday().to_monday_zero_offset() as i64))
        .unwrap_or(local);
    tz.to_ambiguous_zoned_datetime(monday.to_datetime(Time::midnight()))
        .compatible()
        .map(|z| z.timestamp())
        .unwrap_or(t)
}

/// One week, in seconds (OCPP's Weekly recurrence).
pub const WEEK: SignedDuration = SignedDuration::from_secs(7 * 24 * 3600);

/// Parse "HH:MM" ("24:00" allowed as the end of the day).
pub fn parse_minute(s: &str) -> Option<Minute> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    match (h, m) {
        (24, 0) => Some(1440),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

/// Parse days: "mon-fri", "sat,sun", "daily", "weekends", "weekdays".
pub fn parse_days(s: &str) -> Option<[bool; 7]> {
    const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let idx = |n: &str| {
        let n = n.trim().to_ascii_lowercase();
        NAMES.iter().position(|x| n.starts_with(x) && n.len() <= 9)
    };
    let mut days = [false; 7];
    for part in s.split(',') {
        let part = part.trim().to_ascii_lowercase();
        match part.as_str() {
            "daily" | "all" | "every day" => days = [true; 7],
            "weekdays" => days[..5].fill(true),
            "weekends" | "weekend" => days[5..].fill(true),
            _ => match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (idx(a)?, idx(b)?);
                    let mut d = a;
                    loop {
                        days[d] = true;
                        if d == b {
                            break;
                        }
                        d = (d + 1) % 7;
                    }
                }
                None => days[idx(&part)?] = true,
            },
        }
    }
    days.iter().any(|d| *d).then_some(days)
}

/// "22:00" from minutes.
pub fn show_minute(m: Minute) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tz() -> TimeZone {
        TimeZone::get("Europe/Berlin").unwrap()
    }

    fn at(s: &str) -> Timestamp {
        // Local civil time in Berlin, "compatible" disambiguation.
        let dt: DateTime = s.parse().unwrap();
        tz().to_ambiguous_zoned_datetime(dt)
            .compatible()
            .unwrap()
            .timestamp()
    }

    fn nights_and_weekends() -> Schedule {
        Schedule {
            name: "off-peak".into(),
            rules: vec![
                Rule {
                    days: parse_days("mon-fri").unwrap(),
                    from: parse_minute("22:00").unwrap(),
                    to: parse_minute("06:00").unwrap(),
                    max_current: Some(16.0),
                },
                Rule {
                    days: parse_days("sat,sun").unwrap(),
                    from: 0,
                    to: 1440,
                    max_current: None,
                },
            ],
        }
    }

    #[test]
    fn windows_cross_midnight_and_weekends_are_open_all_day() {
        let s = nights_and_weekends();
        let tz = tz();
        // 2030-01-07 is a Monday.
        assert_eq!(s.allowed_at(at("2030-01-07T21:59"), &tz), Allowed::Closed);
        assert_eq!(
            s.allowed_at(at("2030-01-07T22:00"), &tz),
            Allowed::Open(Some(16.0))
        );
        assert_eq!(
            s.allowed_at(at("2030-01-08T05:59"), &tz),
            Allowed::Open(Some(16.0))
        );
        assert_eq!(s.allowed_at(at("2030-01-08T06:00"), &tz), Allowed::Closed);
        // Friday's night runs into Saturday, where the weekend rule (uncapped) wins.
        assert_eq!(
            s.allowed_at(at("2030-01-12T03:00"), &tz),
            Allowed::Open(None)
        );
        assert_eq!(
            s.allowed_at(at("2030-01-13T23:59"), &tz),
            Allowed::Open(None)
        );
        // Sunday's window ends at midnight; Monday morning is closed.
        assert_eq!(s.allowed_at(at("2030-01-14T00:30"), &tz), Allowed::Closed);
        assert_eq!(Allowed::Open(Some(16.0)).amps(11.0), 11.0);
        assert_eq!(Allowed::Open(None).amps(32.0), 32.0);
        assert_eq!(Allowed::Closed.amps(32.0), 0.0);
    }

    #[test]
    fn dst_spring_forward_keeps_civil_windows() {
        // 2030-03-31 (Sunday): Berlin jumps from 02:00 to 03:00.
        let s = Schedule {
            name: "early".into(),
            rules: vec![Rule {
                days: [true; 7],
                from: parse_minute("01:00").unwrap(),
                to: parse_minute("05:00").unwrap(),
                max_current: None,
            }],
        };
        let tz = tz();
        let start = at("2030-03-31T00:00");
        let end = at("2030-04-01T00:00");
        let steps = s.steps(start, end, &tz);
        let hours: Vec<(i64, Allowed)> = steps
            .iter()
            .map(|(t, a)| (t.duration_since(start).as_secs() / 3600, *a))
            .collect();
        // Opens at 01:00 local (1 h after midnight) and closes at 05:00 local,
        // which is only 4 h after midnight on this 23-hour day.
        assert_eq!(
            hours,
            vec![
                (0, Allowed::Closed),
                (1, Allowed::Open(None)),
                (4, Allowed::Closed)
            ]
        );
        // The window is 3 real hours long that night.
        assert_eq!(
            s.allowed_at(at("2030-03-31T04:59"), &tz),
            Allowed::Open(None)
        );
    }

    #[test]
    fn dst_fall_back_keeps_civil_windows() {
        // 2030-10-27 (Sunday): Berlin goes from 03:00 back to 02:00.
        let s = Schedule {
            name: "night".into(),
            rules: vec![Rule {
                days: [true; 7],
                from: parse_minute("22:00").unwrap(),
                to: parse_minute("06:00").unwrap(),
                max_current: Some(10.0),
            }],
        };
        let tz = tz();
        let open = at("2030-10-26T22:00");
        let steps = s.steps(
            open - SignedDuration::from_secs(60),
            open + SignedDuration::from_hours(12),
            &tz,
        );
        assert_eq!(steps.len(), 3, "{steps:?}");
        assert_eq!(steps[1], (open, Allowed::Open(Some(10.0))));
        // 22:00 → 06:00 local is 9 real hours across the fall-back night.
        assert_eq!(steps[2].0.duration_since(open).as_secs(), 9 * 3600);
        assert_eq!(steps[2].1, Allowed::Closed);
        // Both 02:30s of the repeated hour are inside the window.
        let first_230 = at("2030-10-27T02:30");
        assert_eq!(s.allowed_at(first_230, &tz), Allowed::Open(Some(10.0)));
        assert_eq!(
            s.allowed_at(first_230 + SignedDuration::from_hours(1), &tz),
            Allowed::Open(Some(10.0))
        );
    }

    #[test]
    fn week_start_is_local_monday_midnight_across_dst() {
        let tz = tz();
        // The week after the spring change began on Monday 2030-04-01 00:00
        // CEST, which is 2030-03-31T22:00Z.
        let w = week_start(at("2030-04-03T12:00"), &tz);
        assert_eq!(w, "2030-03-31T22:00:00Z".parse::<Timestamp>().unwrap());
        // A week that contains the change is 167 hours long.
        let w0 = week_start(at("2030-03-27T12:00"), &tz);
        assert_eq!(w.duration_since(w0).as_secs(), 167 * 3600);
    }

    #[test]
    fn day_and_time_syntax() {
        assert_eq!(
            parse_days("mon-fri").unwrap(),
            [true, true, true, true, true, false, false]
        );
        assert_eq!(
            parse_days("fri-mon").unwrap(),
            [true, false, false, false, true, true, true]
        );
        assert_eq!(
            parse_days("Saturday, Sunday").unwrap(),
            [false, false, false, false, false, true, true]
        );
        assert_eq!(parse_days("daily").unwrap(), [true; 7]);
        assert!(parse_days("someday").is_none());
        assert!(parse_days("").is_none());
        assert_eq!(parse_minute("06:30"), Some(390));
        assert_eq!(parse_minute("24:00"), Some(1440));
        for bad in ["24:01", "7", "07:5", "aa:bb", "-1:00"] {
            assert_eq!(parse_minute(bad), None, "{bad}");
        }
        assert_eq!(show_minute(1320), "22:00");
    }
}
