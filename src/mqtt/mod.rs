//! MQTT and Home Assistant: the gateway publishes every charger's state,
//! its events and Home Assistant discovery configs to a broker, and runs
//! the remote actions that arrive on command topics (journaled with source
//! `mqtt`). The broker being down never affects charging: publishing never
//! waits, and everything retained is published again on reconnect.
//! [`ha`] holds the topic layout and the JSON, pure.

pub mod ha;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rumqttc::{AsyncClient, Event as MqttEvent, LastWill, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::actions::ActionRequest;
use crate::config::MqttConfig;
use crate::event::Source;
use crate::hub::Ctx;
use ha::Layout;

/// What the connection task tells the main loop.
enum Incoming {
    Connected,
    Disconnected,
    Publish {
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    },
}

/// Run the MQTT side until shutdown.
pub async fn run(ctx: Ctx, cfg: MqttConfig) {
    let layout = Layout::new(&cfg.prefix, &ctx.cfg.gateway.id, &cfg.discovery_prefix);
    let mut opts = MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
    opts.set_keep_alive(cfg.keepalive);
    opts.set_clean_session(true);
    // Retained discovery configs of other devices come in on subscribe.
    opts.set_max_packet_size(256 * 1024, 256 * 1024);
    opts.set_last_will(LastWill::new(
        layout.status(),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    if let (Some(u), p) = (&cfg.username, &cfg.password) {
        opts.set_credentials(u, p.clone().unwrap_or_default());
    }
    if cfg.tls {
        match crate::upstream::client_tls(cfg.ca_file.as_deref(), Some("the MQTT broker"), None) {
            Ok(tls) => opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            )),
            Err(e) => {
                log::error!("mqtt: {e}; MQTT is off");
                return;
            }
        };
    }
    let (client, eventloop) = AsyncClient::new(opts, 1024);
    let (in_tx, mut in_rx) = mpsc::channel(256);
    let conn = tokio::spawn(connection(
        eventloop,
        in_tx,
        cfg.clone(),
        format!("{}:{}", cfg.host, cfg.port),
    ));
    let mut m = Mqtt {
        ctx: ctx.clone(),
        cfg,
        layout,
        client,
        connected: false,
        last: BTreeMap::new(),
        discovered: BTreeMap::new(),
    };
    let mut events = ctx.journal.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            Some(i) = in_rx.recv() => match i {
                Incoming::Connected => m.on_connect(),
                Incoming::Disconnected => m.connected = false,
                Incoming::Publish { topic, payload, retain } => m.on_publish(&topic, &payload, retain),
            },
            ev = events.recv() => match ev {
                Ok(rec) => m.publish_event(&rec),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            },
            _ = tick.tick() => m.publish_states(),
            _ = ctx.shutdown.cancelled() => break,
        }
    }
    // Say goodbye ourselves; the last will covers a crash.
    let _ = m
        .client
        .try_publish(m.layout.status(), QoS::AtLeastOnce, true, "offline");
    let _ = m.client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
}

/// Drive rumqttc's event loop in its own task (reconnecting with backoff)
/// and pass on what matters.
async fn connection(
    mut eventloop: rumqttc::EventLoop,
    tx: mpsc::Sender<Incoming>,
    cfg: MqttConfig,
    broker: String,
) {
    let mut backoff = crate::upstream::Backoff::new(Duration::from_millis(500), cfg.backoff_max);
    let mut up = false;
    loop {
        match eventloop.poll().await {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                log::info!("mqtt: connected to {broker}");
                up = true;
                backoff.reset();
                if tx.send(Incoming::Connected).await.is_err() {
                    return;
                }
            }
            Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                let msg = Incoming::Publish {
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                    retain: p.retain,
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                // Let the DISCONNECT go out, then stop.
                let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                if up {
                    log::warn!("mqtt: lost {broker}: {e}; reconnecting");
                    up = false;
                } else {
                    log::debug!("mqtt: cannot reach {broker}: {e}");
                }
                if tx.send(Incoming::Disconnected).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

struct Mqtt {
    ctx: Ctx,
    cfg: MqttConfig,
    layout: Layout,
    client: AsyncClient,
    connected: bool,
    /// Last retained payload published per topic, to publish changes only.
    last: BTreeMap<String, String>,
    /// Chargers whose discovery is out, with what it was built from.
    discovered: BTreeMap<String, String>,
}

impl Mqtt {
    /// Publish without waiting: when the broker is away the request queue
    /// fills and later states are dropped; a reconnect republishes all.
    fn publish(&mut self, topic: String, payload: String, retain: bool) {
        if retain && self.last.get(&topic) == Some(&payload) {
            return;
        }
        match self
            .client
            .try_publish(topic.clone(), QoS::AtLeastOnce, retain, payload.clone())
        {
            Ok(()) if retain => {
                self.last.insert(topic, payload);
            }
            Ok(()) => {}
            Err(e) => log::debug!("mqtt: not published to {topic}: {e}"),
        }
    }

    fn on_connect(&mut self) {
        self.connected = true;
        // A fresh session: everything retained goes out again.
        self.last.clear();
        self.discovered.clear();
        self.publish(self.layout.status(), "online".into(), true);
        let mut subs = vec![self.layout.ha_status()];
        if self.cfg.commands {
            subs.push(self.layout.command_filter());
        }
        if self.cfg.discovery {
            // Retained configs of chargers no longer configured come back
            // here and are cleared.
            subs.push(self.layout.discovery_filter());
        }
        for s in subs {
            if let Err(e) = self.client.try_subscribe(s.clone(), QoS::AtLeastOnce) {
                log::warn!("mqtt: cannot subscribe to {s}: {e}");
            }
        }
        self.publish_states();
    }

    /// The chargers that get a device: the configured ones, and any that
    /// connected when unknown chargers are allowed.
    fn devices(&self) -> BTreeSet<String> {
        let cfg = self.ctx.live.get();
        let mut ids: BTreeSet<String> = cfg.chargers.keys().cloned().collect();
        if cfg.ocpp.allow_unknown {
            ids.extend(self.ctx.journal.state().chargers.keys().cloned());
        }
        ids
    }

    fn publish_states(&mut self) {
        if !self.connected {
            return;
        }
        let cfg = self.ctx.live.get();
        let state = self.ctx.journal.state();
        let connected = self.ctx.registry.connected();
        let smart = self
            .ctx
            .smart
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let devices = self.devices();
        let empty = crate::state::ChargerState::default();
        for id in &devices {
            let s = state.chargers.get(id).map_or(&empty, |c| &**c);
            let up = connected.contains(id);
            let limit = smart
                .chargers
                .get(id)
                .map(|l| (l.limit_a, l.reason.as_str()))
                .or_else(|| s.limit.as_ref().map(|l| (l.amps, l.reason.as_str())));
            let max_current = cfg.limits(id).max_current;
            let doc = ha::charger_state(
                s,
                &ha::Extra {
                    connected: up,
                    standalone: cfg.upstream.is_none(),
                    limit,
                    max_current,
                    now_ms,
                },
            );
            self.publish(
                self.layout.availability(id),
                if up { "online" } else { "offline" }.into(),
                true,
            );
            self.publish(self.layout.state(id), doc.to_string(), true);
            if self.cfg.discovery {
                // Rebuilt when what the device page shows changes (boot info).
                let key = format!("{:?}{max_current}", s.boot);
                if self.discovered.get(id) != Some(&key) {
                    for (topic, config) in ha::charger_discovery(
                        &self.layout,
                        id,
                        Some(s),
                        self.cfg.commands,
                        max_current,
                        cfg.upstream.is_none(),
                    ) {
                        self.publish(topic, config.to_string(), true);
                    }
                    self.discovered.insert(id.clone(), key);
                }
            }
        }
        // Chargers removed from the config (SIGHUP): their devices go.
        let gone: Vec<String> = self
            .discovered
            .keys()
            .filter(|id| !devices.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.discovered.remove(&id);
            self.clear_discovery(&id);
        }
        self.publish_gateway(&cfg, connected.len(), &smart);
    }

    /// The gateway's own state, the meter's reading and the gateway's
    /// discovery configs.
    fn publish_gateway(
        &mut self,
        cfg: &crate::config::Config,
        connected: usize,
        smart: &crate::smart::status::SmartStatus,
    ) {
        let gateway = json!({
            "chargers_connected": connected,
            "load": if smart.load.is_empty() { "off" } else { smart.load.as_str() },
            "available_a": smart.available_a,
        });
        self.publish(self.layout.gateway_state(), gateway.to_string(), true);
        if let Some(r) = smart.meter.as_ref().and_then(|m| m.last.as_ref()) {
            if let Ok(v) = serde_json::to_string(r) {
                self.publish(self.layout.meter(), v, true);
            }
        }
        // Unchanged configs are not sent again (see `publish`).
        if self.cfg.discovery {
            for (topic, config) in ha::gateway_discovery(
                &self.layout,
                cfg.smart.meter.is_some(),
                cfg.smart.load.is_some(),
            ) {
                self.publish(topic, config.to_string(), true);
            }
        }
    }

    fn clear_discovery(&mut self, id: &str) {
        log::info!("mqtt: {id} is no longer configured; removing its Home Assistant device");
        // Its retained state and availability go too, or they would stay
        // on the broker for ever.
        let mut topics = ha::charger_discovery_topics(&self.layout, id);
        topics.push(self.layout.state(id));
        topics.push(self.layout.availability(id));
        for topic in topics {
            self.last.remove(&topic);
            self.publish(topic, String::new(), true);
        }
    }

    fn publish_event(&mut self, rec: &crate::event::Record) {
        let Some(id) = rec.charger.as_deref() else {
            return;
        };
        if !self.connected {
            return;
        }
        let mut v = serde_json::to_value(&rec.event).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("seq".into(), json!(rec.seq));
            o.insert("time_ms".into(), json!(rec.time_ms));
            o.insert("summary".into(), json!(rec.event.summary()));
        }
        self.publish(self.layout.event(id), v.to_string(), false);
    }

    fn on_publish(&mut self, topic: &str, payload: &[u8], retain: bool) {
        if topic == self.layout.ha_status() {
            if payload == b"online" {
                // Home Assistant restarted: it needs the configs again.
                log::info!("mqtt: Home Assistant is online; publishing discovery again");
                self.last.clear();
                self.discovered.clear();
                self.publish_states();
            }
            return;
        }
        if let Some(node) = self.layout.node_of_discovery_topic(topic) {
            if retain && !payload.is_empty() {
                let known = self
                    .devices()
                    .iter()
                    .any(|id| self.layout.charger_node(id) == node);
                if !known {
                    // A device of ours from before, for a charger that is gone.
                    self.last.remove(topic);
                    self.publish(topic.to_string(), String::new(), true);
                }
            }
            return;
        }
        if let Some((id, action)) = self.layout.parse_command(topic) {
            if !self.cfg.commands {
                return;
            }
            match command(&action, payload) {
                Ok((name, req)) => {
                    let ctx = self.ctx.clone();
                    let client = self.client.clone();
                    let result_topic = self.layout.result(&id);
                    tokio::spawn(async move {
                        let out = match crate::dispatch::run(
                            &ctx,
                            id.clone(),
                            name.clone(),
                            req,
                            Source::Mqtt,
                        )
                        .await
                        {
                            Ok(r) => serde_json::to_value(&r).unwrap_or(Value::Null),
                            Err(e) => {
                                json!({"charger": id, "action": name, "outcome": "refused", "error": e.to_string()})
                            }
                        };
                        let _ = client.try_publish(
                            result_topic,
                            QoS::AtLeastOnce,
                            false,
                            out.to_string(),
                        );
                    });
                }
                Err(why) => {
                    log::warn!("mqtt: ignored command on {topic}: {why}");
                    let out = json!({"charger": id, "action": action, "outcome": "rejected", "error": why.to_string()});
                    self.publish(self.layout.result(&id), out.to_string(), false);
                }
            }
        }
    }
}

/// A command topic's action and payload as a remote action. Buttons send
/// `PRESS` (or nothing, or a JSON object of parameters); the pause switch
/// `ON`/`OFF`; the current cap a number.
pub fn command(action: &str, payload: &[u8]) -> Result<(String, ActionRequest), BadCommand> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| BadCommand::NotUtf8)?
        .trim();
    let short = |t: &str| t.chars().take(60).collect::<String>();
    let json_req = |t: &str| -> Result<ActionRequest, BadCommand> {
        if t.is_empty() || t == "PRESS" {
            return Ok(ActionRequest::default());
        }
        match serde_json::from_str::<Value>(t) {
            Ok(v @ Value::Object(_)) => serde_json::from_value(v).map_err(BadCommand::Parameter),
            Ok(_) | Err(_) => Err(BadCommand::NotPress(short(t))),
        }
    };
    match action {
        "pause" => match text {
            "ON" => Ok(("pause".into(), ActionRequest::default())),
            "OFF" => Ok(("resume".into(), ActionRequest::default())),
            t if t.starts_with('{') => Ok(("pause".into(), json_req(t)?)),
            t => Err(BadCommand::NotOnOff(short(t))),
        },
        "limit" => match text.parse::<f64>() {
            Ok(a) if (0.0..=1000.0).contains(&a) => Ok((
                "limit".into(),
                ActionRequest {
                    amps: Some(a),
                    ..Default::default()
                },
            )),
            _ if text.starts_with('{') => Ok(("limit".into(), json_req(text)?)),
            _ => Err(BadCommand::NotAmps(short(text))),
        },
        a if crate::actions::NAMES.contains(&a) => Ok((a.to_string(), json_req(text)?)),
        a => Err(BadCommand::UnknownAction(short(a))),
    }
}

/// Why a command topic's message was rejected (said on the result topic).
#[derive(Debug, thiserror::Error)]
pub enum BadCommand {
    #[error("payload is not UTF-8")]
    NotUtf8,
    #[error("bad parameter in the JSON object: {0}")]
    Parameter(serde_json::Error),
    #[error("expected PRESS or a JSON object of parameters, found {0:?}")]
    NotPress(String),
    #[error("pause: expected ON or OFF, found {0:?}")]
    NotOnOff(String),
    #[error("limit: expected a current in amperes (0 to 1000), found {0:?}")]
    NotAmps(String),
    #[error("unknown action {0:?} (known: {known})", known = crate::actions::NAMES.join(", "))]
    UnknownAction(String),
}

#[cfg(test)]
mod tests {
    use super::command;

    #[test]
    fn command_payloads() {
        assert_eq!(command("reboot", b"PRESS").unwrap().0, "reboot");
        assert_eq!(command("reboot", b"").unwrap().0, "reboot");
        let (_, r) = command("start", br#"{"connector": 2, "id_tag": "T"}"#).unwrap();
        assert_eq!((r.connector, r.id_tag.as_deref()), (Some(2), Some("T")));
        assert_eq!(command("pause", b"ON").unwrap().0, "pause");
        assert_eq!(command("pause", b"OFF").unwrap().0, "resume");
        assert_eq!(command("limit", b"10").unwrap().1.amps, Some(10.0));
        for (action, bad) in [
            ("start", &b"{nope"[..]),
            ("start", b"[1]"),
            ("pause", b"maybe"),
            ("limit", b"-3"),
            ("limit", b"lots"),
            ("explode", b"PRESS"),
            ("reboot", b"\xff\xfe"),
        ] {
            assert!(command(action, bad).is_err(), "{action} {bad:?}");
        }
    }
}
