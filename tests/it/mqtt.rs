//! MQTT and Home Assistant against a real Mosquitto broker, started by the
//! test on a free port (Debian's `mosquitto`, installed by `.ci/run`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use crate::harness::*;

/// A broker of the test's own.
struct Mosquitto {
    child: tokio::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    async fn start() -> Mosquitto {
        Self::start_on(free_addr()).await
    }

    async fn start_on(addr: SocketAddr) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n",
                addr.port()
            ),
        )
        .unwrap();
        let child = spawn_mosquitto(&conf, &[addr]).await;
        Mosquitto {
            child,
            addr,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Debian's mosquitto on `conf`, once every one of `listeners` accepts.
async fn spawn_mosquitto(
    conf: &std::path::Path,
    listeners: &[SocketAddr],
) -> tokio::process::Child {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("mosquitto is installed (set-up: apt-get install -y mosquitto)");
    let child = tokio::process::Command::new(bin)
        .arg("-c")
        .arg(conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    for addr in listeners {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    child
}

/// A test client subscribed to everything, keeping what it saw.
struct Watcher {
    client: AsyncClient,
    seen: Arc<Mutex<Vec<(String, String, bool)>>>,
}

impl Watcher {
    async fn start(broker: SocketAddr) -> Watcher {
        let mut opts = MqttOptions::new(
            format!("watcher-{}", fastrand::u32(..)),
            "127.0.0.1",
            broker.port(),
        );
        opts.set_max_packet_size(256 * 1024, 256 * 1024);
        let (client, mut el) = AsyncClient::new(opts, 64);
        client.subscribe("#", QoS::AtLeastOnce).await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => s.lock().unwrap().push((
                        p.topic.clone(),
                        String::from_utf8_lossy(&p.payload).into_owned(),
                        p.retain,
                    )),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Watcher { client, seen }
    }

    /// The latest message on `topic` whose payload satisfies `pred`.
    async fn wait(&self, topic: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        loop {
            if let Some((_, p, _)) = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|(t, p, _)| t == topic && pred(p))
            {
                return p.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing on {topic}; seen: {:#?}",
                self.seen
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(t, _, _)| t.clone())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn count(&self, topic_part: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _, _)| t.contains(topic_part))
            .count()
    }

    async fn publish(&self, topic: &str, payload: &str, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
            .await
            .unwrap();
    }
}

fn mqtt_section(broker: SocketAddr) -> String {
    format!(
        "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nkeepalive_secs = 5\nbackoff_max_secs = 1\n",
        broker.port()
    )
}

const NODE: &str = "chargegate_chargegate__SIM-1";

#[tokio::test]
async fn home_assistant_gets_a_device_per_charger_whose_buttons_work() {
    let broker = Mosquitto::start().await;
    let watcher = Watcher::start(broker.addr).await;
    // A device left over from a charger that is no longer configured.
    let stale = "homeassistant/sensor/chargegate_chargegate__OLD-9/power/config";
    watcher.publish(stale, r#"{"name":"Power"}"#, true).await;
    let gw = Gateway::start(
        None,
        &format!("{}[[charger]]\nid = \"SIM-1\"\n", mqtt_section(broker.addr)),
    )
    .await;
    let sim = sim_charging(gw.ocpp, 1, Default::default(), Default::default());

    watcher
        .wait("chargegate/chargegate/status", |p| p == "online")
        .await;
    let energy: Value = serde_json::from_str(
        &watcher
            .wait(&format!("homeassistant/sensor/{NODE}/energy/config"), |p| {
                !p.is_empty()
            })
            .await,
    )
    .unwrap();
    assert_eq!(energy["state_class"], "total_increasing");
    assert_eq!(energy["device_class"], "energy");
    assert_eq!(energy["unique_id"], format!("{NODE}_energy"));
    assert_eq!(energy["state_topic"], "chargegate/chargegate/SIM-1/state");
    assert_eq!(energy["device"]["via_device"], "chargegate_chargegate");
    // Once the charger booted, its device shows what it said at boot.
    let power: Value = serde_json::from_str(
        &watcher
            .wait(&format!("homeassistant/sensor/{NODE}/power/config"), |p| {
                p.contains("Simulator")
            })
            .await,
    )
    .unwrap();
    assert_eq!(power["device"]["manufacturer"], "ChargeGate");
    assert_eq!(power["device"]["model"], "Simulator");
    // The stale device is removed.
    watcher.wait(stale, |p| p.is_empty()).await;

    // State follows the session.
    let state: Value = serde_json::from_str(
        &watcher
            .wait("chargegate/chargegate/SIM-1/state", |p| {
                p.contains("\"status\":\"Charging\"") && p.contains("SIMTAG")
            })
            .await,
    )
    .unwrap();
    assert_eq!(state["charger_link"], "up");
    assert_eq!(state["session"]["id_tag"], "SIMTAG");
    watcher
        .wait("chargegate/chargegate/SIM-1/availability", |p| {
            p == "online"
        })
        .await;
    watcher
        .wait("chargegate/chargegate/SIM-1/event", |p| {
            p.contains("StartTransaction")
        })
        .await;

    // Reboot button.
    let reboot: Value = serde_json::from_str(
        &watcher
            .wait(&format!("homeassistant/button/{NODE}/reboot/config"), |p| {
                !p.is_empty()
            })
            .await,
    )
    .unwrap();
    watcher
        .publish(reboot["command_topic"].as_str().unwrap(), "PRESS", false)
        .await;
    let result: Value = serde_json::from_str(
        &watcher
            .wait("chargegate/chargegate/SIM-1/result", |p| {
                p.contains("Reset")
            })
            .await,
    )
    .unwrap();
    assert_eq!(result["result"]["status"], "Accepted");
    let ev = gw
        .wait_event("SIM-1", "RemoteAction", |e| e["action"] == "Reset")
        .await;
    assert_eq!(ev["source"], "mqtt");
    gw.wait_event("SIM-1", "Disconnect", |e| e["link"] == "charger")
        .await;
    assert!(
        gw.wait_count("SIM-1", "Connect", 2).await >= 2,
        "the simulator rebooted and came back"
    );

    // A malformed command is answered with a reason; nothing breaks.
    watcher
        .publish("chargegate/chargegate/SIM-1/cmd/start", "{nope", false)
        .await;
    let bad = watcher
        .wait("chargegate/chargegate/SIM-1/result", |p| {
            p.contains("rejected")
        })
        .await;
    assert!(bad.contains("JSON object"), "{bad}");

    // The pause switch.
    watcher
        .publish("chargegate/chargegate/SIM-1/cmd/pause", "ON", false)
        .await;
    watcher
        .wait("chargegate/chargegate/SIM-1/state", |p| {
            p.contains("\"paused\":\"ON\"")
        })
        .await;
    gw.wait_event("SIM-1", "Override", |e| {
        e["mode"] == "pause" && e["source"] == "mqtt"
    })
    .await;

    // Home Assistant restarts: it gets every config again.
    let node = format!("/{NODE}/");
    let configs: std::collections::BTreeSet<String> = watcher
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _, _)| t.contains(&node))
        .map(|(t, _, _)| t.clone())
        .collect();
    assert!(configs.len() >= 12, "{configs:?}");
    let before = watcher.count(&node);
    watcher
        .publish("homeassistant/status", "online", false)
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while watcher.count(&node) < before + configs.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "discovery not published again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.abort();
    broker.stop().await;
}

#[tokio::test]
async fn the_broker_publishes_the_last_will_when_the_gateway_is_killed() {
    let broker = Mosquitto::start().await;
    let watcher = Watcher::start(broker.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "{}{}",
            config_text(&dir.path().join("data"), None, ""),
            mqtt_section(broker.addr)
        ),
    );
    let gw = Process::spawn(&cfg).await;
    watcher
        .wait("chargegate/chargegate/status", |p| p == "online")
        .await;
    gw.kill9().await;
    watcher
        .wait("chargegate/chargegate/status", |p| p == "offline")
        .await;
    broker.stop().await;
}

#[tokio::test]
async fn charging_goes_on_while_the_broker_is_away_and_the_gateway_reconnects() {
    let broker = Mosquitto::start().await;
    let addr = broker.addr;
    // Read-only: Home Assistant sees everything and can press nothing.
    let gw = Gateway::start(None, &format!("{}commands = false\n", mqtt_section(addr))).await;
    let sim = sim_charging(gw.ocpp, 1, Default::default(), Default::default());
    let watcher = Watcher::start(addr).await;
    watcher
        .wait("chargegate/chargegate/SIM-1/state", |p| {
            p.contains("\"status\":\"Charging\"")
        })
        .await;
    broker.stop().await;

    // No broker: the session carries on, meter values keep coming.
    let before = gw.wait_count("SIM-1", "MeterValues", 1).await;
    assert!(gw.wait_count("SIM-1", "MeterValues", before + 5).await >= before + 5);
    assert_eq!(
        gw.events("SIM-1")
            .iter()
            .filter(|r| r.event.kind() == "StopTransaction")
            .count(),
        0
    );

    // The broker is back (empty: no persistence): the gateway reconnects
    // and publishes its retained state again.
    let broker = Mosquitto::start_on(addr).await;
    let watcher = Watcher::start(addr).await;
    watcher
        .wait("chargegate/chargegate/status", |p| p == "online")
        .await;
    watcher
        .wait("chargegate/chargegate/SIM-1/state", |p| {
            p.contains("\"status\":\"Charging\"")
        })
        .await;
    watcher
        .publish("chargegate/chargegate/SIM-1/cmd/reboot", "PRESS", false)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !gw.events("SIM-1")
            .iter()
            .any(|r| r.event.kind() == "RemoteAction"),
        "read-only mode runs no command"
    );
    assert_eq!(watcher.count("/button/"), 0, "and offers no buttons");
    sim.abort();
    broker.stop().await;
}

#[tokio::test]
async fn the_broker_can_be_reached_over_tls_with_its_own_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::tls::ca("Broker CA");
    let (cert, key) = crate::tls::leaf(&ca, "broker", true, false);
    let w = |n: &str, t: &str| {
        let p = dir.path().join(n);
        std::fs::write(&p, t).unwrap();
        p
    };
    let (ca_file, cert_file, key_file) = (
        w("ca.pem", &ca.pem),
        w("broker.pem", &cert),
        w("broker.key", &key),
    );
    // Mosquitto with a plain listener (for the test's watcher) and a TLS one.
    let (plain, tls) = (free_addr(), free_addr());
    let conf = w(
        "mosquitto.conf",
        &format!(
            "allow_anonymous true\npersistence false\nlistener {} 127.0.0.1\nlistener {} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
            plain.port(),
            tls.port(),
            ca_file.display(),
            cert_file.display(),
            key_file.display()
        ),
    );
    let mut broker = spawn_mosquitto(&conf, &[plain, tls]).await;
    let watcher = Watcher::start(plain).await;
    let gw = Gateway::start(
        None,
        &format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\ntls = true\nca_file = {:?}\nbackoff_max_secs = 1\n",
            tls.port(),
            ca_file
        ),
    )
    .await;
    watcher
        .wait("chargegate/chargegate/status", |p| p == "online")
        .await;
    // A gateway that does not trust the broker's CA never gets in.
    let d2 = tempfile::tempdir().unwrap();
    let text = config_text(&d2.path().join("data"), None, "")
        .replace("[gateway]\n", "[gateway]\nid = \"untrusting\"\n")
        + &format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\ntls = true\nbackoff_max_secs = 1\n",
            tls.port()
        );
    let other =
        chargegate::daemon::start(chargegate::config::Config::parse(&text, "t.toml").unwrap())
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        watcher.count("chargegate/untrusting/"),
        0,
        "no TLS without a trusted certificate"
    );
    other.stop().await;
    drop(gw);
    let _ = broker.kill().await;
}

#[tokio::test]
async fn a_charger_removed_by_sighup_leaves_nothing_retained() {
    let broker = Mosquitto::start().await;
    let watcher = Watcher::start(broker.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let base = config_text(&dir.path().join("data"), None, &mqtt_section(broker.addr));
    let path = write_config(
        dir.path(),
        &format!("{base}[[charger]]\nid = \"CP-GONE\"\n"),
    );
    let cfg = chargegate::config::Config::load(&path).unwrap();
    let running = chargegate::daemon::start(cfg).await.unwrap();
    // A configured charger that never connected has its device and state.
    let node = "chargegate_chargegate__CP-GONE";
    watcher
        .wait(&format!("homeassistant/sensor/{node}/status/config"), |p| {
            !p.is_empty()
        })
        .await;
    watcher
        .wait("chargegate/chargegate/CP-GONE/state", |p| !p.is_empty())
        .await;
    watcher
        .wait("chargegate/chargegate/CP-GONE/availability", |p| {
            p == "offline"
        })
        .await;
    // Standalone: no cloud link entity to show a meaningless "on".
    let cloud_link = format!("homeassistant/binary_sensor/{node}/cloud_link/config");
    assert!(!watcher
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|(t, _, _)| *t == cloud_link));

    std::fs::write(&path, &base).unwrap();
    chargegate::daemon::reload(&path, &running.live);
    for topic in [
        format!("homeassistant/sensor/{node}/status/config"),
        "chargegate/chargegate/CP-GONE/state".to_string(),
        "chargegate/chargegate/CP-GONE/availability".to_string(),
    ] {
        watcher.wait(&topic, |p| p.is_empty()).await;
    }
    running.stop().await;
}
