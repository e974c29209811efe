//! The site check's judgement: each finding for the charger or site that
//! has the problem, and not for a healthy one.

use super::*;
use crate::state::{BootInfo, LinkState};

fn healthy_config() -> BTreeMap<String, String> {
    [
        ("HeartbeatInterval", "300"),
        ("MeterValueSampleInterval", "60"),
        (
            "MeterValuesSampledData",
            "Energy.Active.Import.Register,Power.Active.Import,Current.Import",
        ),
        (
            "SupportedFeatureProfiles",
            "Core,SmartCharging,RemoteTrigger",
        ),
        ("ChargeProfileMaxStackLevel", "10"),
        ("ChargingScheduleAllowedChargingRateUnit", "Current,Power"),
        ("LocalAuthListEnabled", "true"),
        ("AuthorizeRemoteTxRequests", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn healthy(id: &str) -> Gathered {
    let mut st = ChargerState {
        id: id.into(),
        ..Default::default()
    };
    st.charger_link = LinkState {
        up: true,
        since_ms: Some(0),
        reason: None,
        protocol: Some("ocpp1.6".into()),
        remote: None,
    };
    st.cloud_link = LinkState {
        up: true,
        since_ms: Some(0),
        reason: None,
        protocol: None,
        remote: None,
    };
    st.boot = Some(BootInfo {
        vendor: "V".into(),
        model: "M".into(),
        firmware: Some("1.0".into()),
        serial: Some("S1".into()),
        time_ms: 0,
    });
    st.meter.clock_skew_s = Some(1);
    Gathered {
        id: id.into(),
        configured: true,
        connected: true,
        state: Some(st),
        config: Ok(healthy_config()),
        recent: Recent::default(),
        outbox: Stats::default(),
        profile: 1,
    }
}

fn settings() -> Settings {
    Settings {
        cloud: true,
        load_management: true,
        stack_level: 2,
        ..Default::default()
    }
}

fn bad(f: &[Finding]) -> Vec<(Severity, String)> {
    f.iter()
        .filter(|x| x.severity != Severity::Ok)
        .map(|x| (x.severity, x.topic.clone()))
        .collect()
}

#[test]
fn a_healthy_charger_has_nothing_to_fix() {
    let f = charger(&healthy("CP-1"), &settings(), 0);
    assert_eq!(bad(&f), vec![], "{f:#?}");
    for topic in [
        "link",
        "cloud",
        "identity",
        "clock",
        "heartbeat",
        "meter values",
        "smart charging",
        "authorization",
    ] {
        assert!(
            f.iter().any(|x| x.topic == topic),
            "no {topic} line: {f:#?}"
        );
    }
}

#[test]
fn each_common_field_problem_is_found_and_said_with_what_to_do() {
    let s = settings();
    let with = |key: &str, value: &str| {
        let mut g = healthy("CP-1");
        g.config.as_mut().unwrap().insert(key.into(), value.into());
        charger(&g, &s, 0)
    };
    let f = with("MeterValueSampleInterval", "900");
    assert_eq!(bad(&f), vec![(Severity::Warning, "meter values".into())]);
    let todo = f
        .iter()
        .find(|x| x.severity == Severity::Warning)
        .unwrap()
        .todo
        .clone()
        .unwrap();
    assert_eq!(
        todo,
        "chargegate action change-config CP-1 --key MeterValueSampleInterval --value 60"
    );
    let f = with("MeterValuesSampledData", "Energy.Active.Import.Register");
    assert_eq!(
        bad(&f),
        vec![(Severity::Problem, "meter values".into())],
        "Current.Import missing under load management"
    );
    assert!(f.iter().any(|x| x.what.contains("undercounts")));
    let f = with("MeterValuesSampledData", "Current.Import");
    assert!(f.iter().any(|x| x.what.contains("cannot bill")), "{f:#?}");
    let f = with("SupportedFeatureProfiles", "Core,RemoteTrigger");
    assert_eq!(bad(&f), vec![(Severity::Problem, "smart charging".into())]);
    let f = with("ChargeProfileMaxStackLevel", "1");
    assert_eq!(bad(&f), vec![(Severity::Problem, "smart charging".into())]);
    let f = with("ChargingScheduleAllowedChargingRateUnit", "Power");
    assert_eq!(bad(&f), vec![(Severity::Problem, "smart charging".into())]);
    let f = with("HeartbeatInterval", "0");
    assert_eq!(bad(&f), vec![(Severity::Warning, "heartbeat".into())]);

    // Without load management or a schedule, missing smart charging is a
    // warning, and Current.Import is not needed.
    let plain = Settings {
        load_management: false,
        ..settings()
    };
    let mut g = healthy("CP-2");
    g.config
        .as_mut()
        .unwrap()
        .insert("SupportedFeatureProfiles".into(), "Core".into());
    g.config.as_mut().unwrap().insert(
        "MeterValuesSampledData".into(),
        "Energy.Active.Import.Register".into(),
    );
    assert_eq!(
        bad(&charger(&g, &plain, 0)),
        vec![(Severity::Warning, "smart charging".into())]
    );
    let scheduled = Settings {
        scheduled: ["CP-2".to_string()].into(),
        ..plain
    };
    assert_eq!(
        bad(&charger(&g, &scheduled, 0)),
        vec![(Severity::Problem, "smart charging".into())]
    );
}

#[test]
fn clock_links_errors_and_silence() {
    let s = settings();
    let mut g = healthy("CP-1");
    g.state.as_mut().unwrap().meter.clock_skew_s = Some(-3600);
    let f = charger(&g, &s, 0);
    assert_eq!(bad(&f), vec![(Severity::Problem, "clock".into())]);
    assert!(f.iter().any(|x| x.what.contains("3600 s behind")), "{f:#?}");
    let link = &f.iter().find(|x| x.topic == "link").unwrap().what;
    assert!(
        link.contains("over ws://") && link.contains("security profile 1 configured"),
        "{link}"
    );

    // A mirror whose link is down.
    let mut g = healthy("CP-1");
    let st = g.state.as_mut().unwrap();
    st.charger_link.remote = Some("wss://10.0.0.5:40000".into());
    st.mirrors.insert(
        "ha".into(),
        LinkState {
            up: false,
            since_ms: Some(0),
            reason: Some("connect failed: refused".into()),
            protocol: None,
            remote: None,
        },
    );
    let f = charger(&g, &s, 0);
    assert_eq!(bad(&f), vec![(Severity::Warning, "mirror".into())]);
    assert!(f.iter().any(|x| x.what.contains("over wss:// (TLS)")));

    let mut g = healthy("CP-1");
    g.config = Err("no answer".into());
    let f = charger(&g, &s, 0);
    assert_eq!(
        bad(&f),
        vec![(Severity::Problem, "config".into())],
        "a charger that never answers is a finding"
    );

    let mut g = healthy("CP-1");
    g.connected = false;
    assert_eq!(
        bad(&charger(&g, &s, 0)),
        vec![(Severity::Problem, "link".into())]
    );

    let mut g = healthy("CP-1");
    g.state.as_mut().unwrap().cloud_link.up = false;
    g.recent.connects = 12;
    g.recent.error_codes.insert("GroundFailure".into());
    g.recent.paused = Some((false, true));
    let f = charger(&g, &s, 0);
    assert_eq!(
        bad(&f),
        vec![
            (Severity::Warning, "link".into()),
            (Severity::Problem, "cloud".into()),
            (Severity::Warning, "errors".into()),
            (Severity::Problem, "smart charging".into()),
        ]
    );
}

#[test]
fn the_site_meter_must_answer_and_cover_what_the_chargers_draw() {
    let base = SiteFacts {
        cloud_url: Some("wss://cloud/ocpp".into()),
        connected: 2,
        cloud_up: 2,
        fuse: Some((63.0, 0.1)),
        meter: Some(MeterFacts {
            reachable: true,
            max_phase_a: Some(40.0),
            error: None,
        }),
        chargers_drawing_a: 32.0,
        disk_free_bytes: Some(5_000_000_000),
        clock_synchronised: Some(true),
        ..Default::default()
    };
    assert_eq!(bad(&site(&base)), vec![]);
    let low = SiteFacts {
        chargers_drawing_a: 60.0,
        ..base.clone()
    };
    assert_eq!(bad(&site(&low)), vec![(Severity::Warning, "meter".into())]);
    let gone = SiteFacts {
        meter: Some(MeterFacts {
            reachable: false,
            max_phase_a: None,
            error: Some("timeout".into()),
        }),
        clock_synchronised: Some(false),
        disk_free_bytes: Some(10_000_000),
        cloud_up: 1,
        ..base
    };
    assert_eq!(
        bad(&site(&gone)),
        vec![
            (Severity::Problem, "cloud".into()),
            (Severity::Problem, "meter".into()),
            (Severity::Problem, "disk".into()),
            (Severity::Problem, "clock".into()),
        ]
    );
}
