//! Smart charging end to end: simulated chargers that follow charging
//! profiles, a schedule on a clock the test moves, and a Modbus TCP meter
//! server playing an Eastron SDM630.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{json, Value};
use tokio_modbus::{ExceptionCode, Request, Response};

use crate::harness::*;

fn berlin(civil: &str) -> Timestamp {
    let dt: jiff::civil::DateTime = civil.parse().unwrap();
    jiff::tz::TimeZone::get("Europe/Berlin")
        .unwrap()
        .to_ambiguous_zoned_datetime(dt)
        .compatible()
        .unwrap()
        .timestamp()
}

/// Wait for the `n`-th event of `kind` for `charger` that satisfies `pred`.
async fn wait_nth(
    gw: &Gateway,
    charger: &str,
    kind: &str,
    n: usize,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let hits: Vec<Value> = gw
            .events(charger)
            .iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .filter(|v| v["kind"] == kind && pred(v))
            .collect();
        if hits.len() >= n {
            return hits[n - 1].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {n} {kind} events for {charger}; journal: {:#?}",
            gw.events(charger)
                .iter()
                .map(|r| serde_json::to_value(r).unwrap())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status_is(s: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["status"] == s && e["connector"] == 1
}

#[tokio::test]
async fn a_schedule_pauses_the_charger_when_its_window_closes_and_resumes_it_when_it_opens() {
    let gw = Gateway::start(
        None,
        r#"
[site]
timezone = "Europe/Berlin"
[[schedule]]
name = "nights"
chargers = ["SIM-1"]
[[schedule.window]]
days = "daily"
from = "22:00"
to = "06:00"
max_current_a = 16
"#,
    )
    .await;
    let clock = gw.running.as_ref().unwrap().clock.clone();
    // Monday 2030-01-07, 22:30 in Berlin: inside the window.
    clock.set(berlin("2030-01-07T22:30"));
    let sim = sim_charging(gw.ocpp, 1, clock.clone(), Default::default());

    wait_nth(&gw, "SIM-1", "StatusNotification", 1, status_is("Charging")).await;
    let l = wait_nth(&gw, "SIM-1", "LimitChanged", 1, |_| true).await;
    assert_eq!(l["limit_a"], 16.0);
    assert_eq!(l["reason"], "schedule \"nights\": window cap");
    // The weekly profile went to the charger, as the gateway's own call.
    let p = wait_nth(&gw, "SIM-1", "RemoteAction", 1, |e| {
        e["action"] == "SetChargingProfile"
    })
    .await;
    assert_eq!(p["source"], "smart");
    assert_eq!(p["result"]["status"], "Accepted");
    let cs = &p["request"]["csChargingProfiles"];
    assert_eq!(cs["chargingProfileKind"], "Recurring");
    assert_eq!(cs["chargingProfilePurpose"], "ChargePointMaxProfile");
    assert_eq!(p["request"]["connectorId"], 0);

    // 06:00:30 the next morning: the charger pauses by itself (its profile
    // says 0 A now), and the gateway says why.
    clock.set(berlin("2030-01-08T06:00:30"));
    wait_nth(
        &gw,
        "SIM-1",
        "StatusNotification",
        1,
        status_is("SuspendedEVSE"),
    )
    .await;
    let l = wait_nth(&gw, "SIM-1", "LimitChanged", 2, |_| true).await;
    assert_eq!(l["limit_a"], 0.0);
    assert_eq!(l["reason"], "schedule \"nights\": outside its windows");

    // 22:00:30 that evening: it resumes.
    clock.set(berlin("2030-01-08T22:00:30"));
    wait_nth(&gw, "SIM-1", "StatusNotification", 2, status_is("Charging")).await;
    assert!(
        gw.journal().state().chargers["SIM-1"].transactions.len() == 1,
        "the same session, paused and resumed"
    );

    // Staff pause it through the API; it stops drawing until resumed.
    let api = gw.running.as_ref().unwrap().api_addr;
    let (code, body) = http_post(
        api,
        "/api/v1/chargers/SIM-1/actions/pause",
        &json!({"until": "2h"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    wait_nth(
        &gw,
        "SIM-1",
        "StatusNotification",
        2,
        status_is("SuspendedEVSE"),
    )
    .await;
    let l = wait_nth(&gw, "SIM-1", "LimitChanged", 1, |e| {
        e["reason"]
            .as_str()
            .unwrap()
            .starts_with("paused by api until")
    })
    .await;
    assert_eq!(l["limit_a"], 0.0);
    let (code, _) = http_post(api, "/api/v1/chargers/SIM-1/actions/resume", &json!({})).await;
    assert_eq!(code, 200);
    wait_nth(&gw, "SIM-1", "StatusNotification", 3, status_is("Charging")).await;
    // The live profile is cleared once, not again and again.
    wait_nth(&gw, "SIM-1", "RemoteAction", 1, |e| {
        e["action"] == "ClearChargingProfile"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let clears = gw
        .events("SIM-1")
        .iter()
        .filter(|r| serde_json::to_value(r).unwrap()["action"] == "ClearChargingProfile")
        .count();
    assert_eq!(clears, 1);
    sim.abort();
}

/// An HTTP POST with a JSON body; returns the status code and the response.
async fn http_post(addr: std::net::SocketAddr, path: &str, body: &Value) -> (u16, String) {
    raw_post(
        addr,
        path,
        "Content-Type: application/json\r\n",
        &body.to_string(),
    )
    .await
}

/// An SDM630 on Modbus TCP: the house load the test sets, plus what the
/// simulated chargers draw right now (ahead of their own meter values, as
/// a real meter is).
#[derive(Clone)]
struct Sdm630 {
    house: Arc<Mutex<[f32; 3]>>,
    sims: Arc<chargegate::sim::SimStats>,
}

impl tokio_modbus::server::Service for Sdm630 {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        let chargers: f32 = self.sims.drawing.lock().unwrap().values().sum::<f64>() as f32;
        let house = *self.house.lock().unwrap();
        let value = |addr: u16| -> Option<f32> {
            Some(match addr {
                0x0006 => house[0] + chargers,
                0x0008 => house[1] + chargers,
                0x000A => house[2] + chargers,
                0x0034 => (house.iter().sum::<f32>() + 3.0 * chargers) * 230.0,
                0x0048 => 1234.5,
                _ => return None,
            })
        };
        std::future::ready(match req {
            Request::ReadInputRegisters(addr, 2) => match value(addr) {
                Some(v) => {
                    let b = v.to_bits();
                    Ok(Response::ReadInputRegisters(vec![
                        (b >> 16) as u16,
                        b as u16,
                    ]))
                }
                None => Err(ExceptionCode::IllegalDataAddress),
            },
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

async fn serve_meter(addr: std::net::SocketAddr, meter: Sdm630) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        let server = tokio_modbus::server::tcp::Server::new(listener);
        let on_connected = |stream, _addr| {
            let m = meter.clone();
            async move { Ok(Some((m, stream))) }
        };
        let _ = server.serve(&on_connected, |_e| {}).await;
    })
}

#[tokio::test]
async fn load_management_follows_a_modbus_meter_and_falls_back_when_it_goes_silent() {
    let meter_addr = free_addr();
    let gw = Gateway::start(
        None,
        &format!(
            r#"
[smart]
min_interval_secs = 0
[load]
fuse_a = 40
margin_a = 2
safe_current_a = 8
meter_timeout_secs = 2
[meter]
transport = "tcp"
address = "{meter_addr}"
model = "sdm630"
poll_ms = 200
timeout_ms = 500
"#
        ),
    )
    .await;
    let house = Arc::new(Mutex::new([10.0f32, 8.0, 9.0]));
    let sims = Arc::new(chargegate::sim::SimStats::default());
    let meter = Sdm630 {
        house: house.clone(),
        sims: sims.clone(),
    };
    let server = serve_meter(meter_addr, meter.clone()).await;
    let sim = sim_charging(gw.ocpp, 2, Default::default(), sims);

    // 38 A for the chargers less 10 A of house load: 14 A each.
    for id in ["SIM-1", "SIM-2"] {
        wait_nth(&gw, id, "LimitChanged", 1, |e| {
            e["limit_a"] == 14.0 && e["reason"] == "load share"
        })
        .await;
        wait_nth(&gw, id, "StatusNotification", 1, status_is("Charging")).await;
    }
    wait_nth(&gw, "SIM-1", "RemoteAction", 1, |e| {
        e["action"] == "SetChargingProfile"
            && e["request"]["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]
                ["limit"]
                == 14.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let st = gw.journal().state();
    assert_eq!(
        st.chargers["SIM-1"].profile_answer.as_deref(),
        Some("Accepted")
    );

    // The house draws 28 A on L1: 10 A left, not enough for two sessions
    // at 6 A; one pauses and waits for its turn.
    *house.lock().unwrap() = [28.0, 8.0, 9.0];
    let waiting = tokio::time::timeout(WAIT * 2, async {
        loop {
            for id in ["SIM-1", "SIM-2"] {
                if gw.events(id).iter().any(|r| {
                    let v = serde_json::to_value(r).unwrap();
                    v["kind"] == "StatusNotification" && v["status"] == "SuspendedEVSE"
                }) {
                    return id;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("one charger paused for lack of current");
    let other = if waiting == "SIM-1" { "SIM-2" } else { "SIM-1" };
    wait_nth(&gw, waiting, "LimitChanged", 1, |e| {
        e["limit_a"] == 0.0 && e["reason"].as_str().unwrap().contains("its turn")
    })
    .await;
    wait_nth(&gw, other, "LimitChanged", 1, |e| e["limit_a"] == 10.0).await;

    // The meter goes silent: after 2 s everyone gets the safe current,
    // so the waiting charger charges again at 8 A.
    server.abort();
    let lost = tokio::time::timeout(WAIT * 2, async {
        loop {
            let hit = gw
                .journal()
                .query(&Default::default())
                .unwrap()
                .into_iter()
                .find(|r| r.event.kind() == "MeterLost");
            if let Some(r) = hit {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("MeterLost journaled");
    assert!(lost.charger.is_none());
    for id in ["SIM-1", "SIM-2"] {
        wait_nth(&gw, id, "LimitChanged", 1, |e| {
            e["limit_a"] == 8.0 && e["reason"] == "meter lost: safe current"
        })
        .await;
    }
    wait_nth(&gw, waiting, "StatusNotification", 2, status_is("Charging")).await;

    // It answers again: sharing resumes.
    *house.lock().unwrap() = [10.0, 8.0, 9.0];
    let _server = serve_meter(meter_addr, meter).await;
    tokio::time::timeout(WAIT * 2, async {
        while !gw
            .journal()
            .query(&Default::default())
            .unwrap()
            .iter()
            .any(|r| r.event.kind() == "MeterRestored")
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("MeterRestored journaled");
    wait_nth(&gw, "SIM-1", "LimitChanged", 2, |e| {
        e["reason"] == "load share"
    })
    .await;

    // Every live profile has a bounded duration over a standing fail-safe
    // one, one stack level below, at the safe current.
    let sent: Vec<Value> = gw
        .events("SIM-1")
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .filter(|v| v["kind"] == "RemoteAction" && v["action"] == "SetChargingProfile")
        .map(|v| v["request"]["csChargingProfiles"].clone())
        .collect();
    let standing: Vec<&Value> = sent
        .iter()
        .filter(|p| p["chargingProfileKind"] == "Recurring")
        .collect();
    let live: Vec<&Value> = sent
        .iter()
        .filter(|p| p["chargingProfileKind"] == "Absolute")
        .collect();
    assert!(!standing.is_empty() && !live.is_empty(), "{sent:#?}");
    assert_eq!(
        standing[0]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"],
        8.0
    );
    for p in &live {
        assert_eq!(
            p["stackLevel"].as_i64(),
            standing[0]["stackLevel"].as_i64().map(|l| l + 1)
        );
        assert_eq!(p["chargingSchedule"]["duration"], 300);
        let start: Timestamp = p["chargingSchedule"]["startSchedule"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(start <= Timestamp::now(), "start times are in the past");
    }
    sim.abort();
}

#[tokio::test]
async fn the_clouds_own_charging_profile_is_relayed_untouched_and_ours_never_clear_it() {
    let mut csms = Csms::start(default_answers()).await;
    let gw = Gateway::start(
        Some(&csms.url()),
        r#"
[[schedule]]
name = "always"
chargers = ["CP-P"]
[[schedule.window]]
days = "daily"
from = "00:00"
to = "24:00"
max_current_a = 20
"#,
    )
    .await;
    let mut cp = Charger::connect(&gw.url("CP-P")).await;
    csms.next_connect().await;
    cp.send(&json!([2, "b1", "BootNotification", boot()]).to_string())
        .await;
    // The gateway's own profile arrives after the boot.
    let mut ours = Vec::new();
    let mut cloud_seen = false;
    let cloud = json!([2, "cloud-1", "SetChargingProfile", {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": {"chargingRateUnit": "A",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}]}}}]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while (ours.is_empty() || !cloud_seen) && tokio::time::Instant::now() < deadline {
        let text = cp.recv().await;
        let f: Value = serde_json::from_str(&text).unwrap();
        match (f[0].as_i64(), f[2].as_str()) {
            (Some(3), _) if f[1] == "b1" => {
                // Booted: now the cloud sets its own profile.
                csms.send("CP-P", &cloud.to_string());
            }
            (Some(2), Some("SetChargingProfile")) if f[1] == "cloud-1" => {
                assert_eq!(f, cloud, "relayed unchanged");
                cloud_seen = true;
                cp.send(&json!([3, "cloud-1", {"status": "Accepted"}]).to_string())
                    .await;
            }
            (Some(2), Some(action)) => {
                assert_ne!(
                    action, "ClearChargingProfile",
                    "the gateway never clears profiles it did not set: {f}"
                );
                ours.push(f[3].clone());
                cp.send(&json!([3, f[1], {"status": "Accepted"}]).to_string())
                    .await;
            }
            _ => {}
        }
    }
    assert!(cloud_seen && !ours.is_empty(), "ours: {ours:?}");
    for p in &ours {
        let cs = &p["csChargingProfiles"];
        assert_ne!(cs["chargingProfileId"], 1);
        assert_eq!(
            cs["chargingProfilePurpose"], "ChargePointMaxProfile",
            "caps the cloud's, does not replace it"
        );
        assert_eq!(p["connectorId"], 0);
    }
    // What the charger now holds: the lower of the two applies.
    let held = [
        ours[0]["csChargingProfiles"].clone(),
        cloud[3]["csChargingProfiles"].clone(),
    ];
    let el = chargegate::smart::profile::Electrical {
        unit: chargegate::smart::profile::RateUnit::Amps,
        phases: 3,
        voltage: 230.0,
    };
    assert_eq!(
        chargegate::smart::profile::composite(&held, Timestamp::now(), &el),
        Some(10.0)
    );
}

#[tokio::test]
async fn sighup_applies_new_chargers_and_schedules_without_dropping_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = config_text(&data, None, "").replace(
        "allow_unknown_chargers = true",
        "allow_unknown_chargers = false",
    );
    let first = format!("{base}[[charger]]\nid = \"CP-OLD\"\n");
    let path = write_config(dir.path(), &first);
    let cfg = chargegate::config::Config::load(&path).unwrap();
    let running = chargegate::daemon::start(cfg).await.unwrap();
    let url = |id: &str| format!("ws://{}/ocpp/{id}", running.ocpp_addr);
    let mut old = Charger::connect(&url("CP-OLD")).await;
    assert_eq!(
        old.call("BootNotification", boot()).await[2]["status"],
        "Accepted"
    );
    let refused = connect_status(&url("CP-NEW"), Some("ocpp1.6"), None).await;
    assert!(refused.is_err(), "unknown before the reload");

    // A new charger, a schedule for the old one, and a new API port (which
    // needs a restart and is not applied).
    let second = format!(
        "{}[[charger]]\nid = \"CP-OLD\"\n[[charger]]\nid = \"CP-NEW\"\n[[schedule]]\nname = \"n\"\nchargers = [\"CP-OLD\"]\n[[schedule.window]]\nfrom = \"22:00\"\nto = \"06:00\"\n",
        base.replace("[api]\nlisten = \"127.0.0.1:0\"", "[api]\nlisten = \"127.0.0.1:1\"")
    );
    std::fs::write(&path, second).unwrap();
    let r = chargegate::daemon::reload(&path, &running.live);
    assert_eq!(
        r,
        chargegate::daemon::Reloaded::Applied {
            live: true,
            restart: vec!["[api]"]
        }
    );
    assert_eq!(
        running.live.get().api.listen.port(),
        0,
        "restart-only parts stay as they run"
    );

    // The connected charger stays and gets the schedule as a profile.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let f: Value = serde_json::from_str(&old.recv().await).unwrap();
        if f[2] == "SetChargingProfile" {
            assert_eq!(
                f[3]["csChargingProfiles"]["chargingProfileKind"],
                "Recurring"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no profile after the reload"
        );
    }
    let mut new = Charger::connect(&url("CP-NEW")).await;
    assert_eq!(
        new.call("BootNotification", boot()).await[2]["status"],
        "Accepted"
    );

    // A broken file changes nothing.
    std::fs::write(&path, "[ocpp\n").unwrap();
    assert!(matches!(
        chargegate::daemon::reload(&path, &running.live),
        chargegate::daemon::Reloaded::Invalid(_)
    ));
    assert!(running.live.get().chargers.contains_key("CP-NEW"));
    running.stop().await;
}

#[tokio::test]
async fn pause_method_stop_stops_the_session_and_starts_it_again_with_the_same_tag() {
    let gw = Gateway::start(
        None,
        r#"
[site]
timezone = "Europe/Berlin"
[[schedule]]
name = "evening"
chargers = ["SIM-1"]
[[schedule.window]]
from = "18:00"
to = "23:00"
[[charger]]
id = "SIM-1"
pause = "stop"
"#,
    )
    .await;
    let clock = gw.running.as_ref().unwrap().clock.clone();
    clock.set(berlin("2030-01-07T19:00"));
    let sim = sim_charging(gw.ocpp, 1, clock.clone(), Default::default());
    wait_nth(&gw, "SIM-1", "StartTransaction", 1, |_| true).await;

    // The window closes: no 0 A profile for this charger (it would end the
    // session its own way), the gateway stops the transaction instead.
    clock.set(berlin("2030-01-07T23:00:30"));
    let stop = wait_nth(&gw, "SIM-1", "RemoteAction", 1, |e| {
        e["action"] == "RemoteStopTransaction"
    })
    .await;
    assert_eq!(stop["source"], "smart");
    wait_nth(&gw, "SIM-1", "StopTransaction", 1, |e| {
        e["reason"] == "Remote"
    })
    .await;
    let profiles: Vec<Value> = gw
        .events("SIM-1")
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .filter(|v| v["kind"] == "RemoteAction" && v["action"] == "SetChargingProfile")
        .collect();
    for p in &profiles {
        for period in p["request"]["csChargingProfiles"]["chargingSchedule"]
            ["chargingSchedulePeriod"]
            .as_array()
            .unwrap()
        {
            assert!(
                period["limit"].as_f64().unwrap() >= 6.0,
                "never below the minimum: {p}"
            );
        }
    }

    // It opens again: the same tag starts a session on the same connector.
    clock.set(berlin("2030-01-08T18:00:30"));
    let start = wait_nth(&gw, "SIM-1", "RemoteAction", 1, |e| {
        e["action"] == "RemoteStartTransaction"
    })
    .await;
    assert_eq!(
        start["request"],
        json!({"connectorId": 1, "idTag": "SIMTAG"})
    );
    wait_nth(&gw, "SIM-1", "StartTransaction", 2, |e| {
        e["id_tag"] == "SIMTAG"
    })
    .await;
    sim.abort();
}
