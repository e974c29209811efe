//! What a simulated charger does with the frames it gets: answers to its
//! own calls, and the gateway's (or the CSMS's) calls answered as a real
//! charger would (resets, remote start and stop, profiles, triggers,
//! configuration, diagnostics).

use super::*;

impl SimCharger {
    pub(super) async fn on_text(
        &mut self,
        text: &str,
        opts: &SimOptions,
        stats: &SimStats,
    ) -> anyhow::Result<()> {
        let frame =
            frame::parse(text).map_err(|e| anyhow::anyhow!("gateway sent a bad frame: {e}"))?;
        match frame {
            Frame::CallResult { id, payload } => {
                let Some((_, action)) = self.in_flight.take_if(|(i, _)| *i == id) else {
                    return Ok(());
                };
                stats.results.fetch_add(1, Ordering::Relaxed);
                self.on_answer(&action, payload.get(), stats);
            }
            Frame::CallError { id, .. } => {
                if self.in_flight.take_if(|(i, _)| *i == id).is_some() {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Frame::Call {
                id,
                action,
                payload,
            } => {
                if self.silent {
                    return Ok(());
                }
                stats.calls_answered.fetch_add(1, Ordering::Relaxed);
                let req: Value = serde_json::from_str(payload.get()).unwrap_or(Value::Null);
                let answer = match self
                    .v201
                    .as_ref()
                    .map(|a| a.call_in(&action, &req, &self.config))
                {
                    None => self.answer(&action, &req, opts),
                    Some(v201::Incoming::Answer(v)) => Some(v),
                    Some(v201::Incoming::NotImplemented) => None,
                    Some(v201::Incoming::As(a16, r16)) => {
                        let ans = self.answer(a16, &r16, opts);
                        let adapter = self.v201.as_ref().expect("speaking 2.0.1");
                        ans.map(|v| adapter.answer_out(&action, &v))
                    }
                };
                let reply = match answer {
                    Some(v) => frame::call_result(&id, &v),
                    None => frame::call_error(
                        &id,
                        "NotImplemented",
                        &format!("simulator does not implement {action}"),
                    ),
                };
                self.ws.send(Message::text(reply)).await?;
            }
        }
        Ok(())
    }

    /// The gateway answered one of the simulator's calls.
    fn on_answer(&mut self, action: &str, payload: &str, stats: &SimStats) {
        let mut v: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
        if let Some(a) = &self.v201 {
            v = a.answer_in(action, &v);
        }
        match action {
            "BootNotification" if v["status"] == "Accepted" => {
                self.booted = true;
                self.status("Available");
            }
            "BootNotification" => self.queue(
                "BootNotification",
                json!({"chargePointVendor": "ChargeGate", "chargePointModel": "Simulator"}),
            ),
            "StartTransaction" => {
                self.transaction = v["transactionId"].as_i64();
                if v["idTagInfo"]["status"] == "Accepted" {
                    self.charging = true;
                    self.meter_sent = 0;
                    stats.sessions.fetch_add(1, Ordering::Relaxed);
                    self.status("Charging");
                } else {
                    self.stop("DeAuthorized");
                }
            }
            _ => {}
        }
    }

    fn answer(&mut self, action: &str, req: &Value, opts: &SimOptions) -> Option<Value> {
        Some(match action {
            "Reset" => {
                self.stop(if req["type"] == "Hard" {
                    "HardReset"
                } else {
                    "SoftReset"
                });
                self.reboot_at = Some(Instant::now() + Duration::from_millis(500));
                json!({"status": "Accepted"})
            }
            "RemoteStartTransaction" if self.transaction.is_none() => {
                let tag = req["idTag"].as_str().unwrap_or(&opts.id_tag).to_string();
                self.start(&tag);
                json!({"status": "Accepted"})
            }
            "RemoteStartTransaction" => json!({"status": "Rejected"}),
            "RemoteStopTransaction"
                if self.transaction.is_some()
                    && req["transactionId"].as_i64() == self.transaction =>
            {
                self.stop("Remote");
                json!({"status": "Accepted"})
            }
            "RemoteStopTransaction" => json!({"status": "Rejected"}),
            "TriggerMessage" => {
                match req["requestedMessage"].as_str() {
                    Some("StatusNotification") => self.status(if self.charging {
                        "Charging"
                    } else {
                        "Available"
                    }),
                    Some("Heartbeat") => self.queue("Heartbeat", json!({})),
                    Some("MeterValues") => self.queue("MeterValues", self.meter_values()),
                    Some("BootNotification") => self.queue(
                        "BootNotification",
                        json!({"chargePointVendor": "ChargeGate", "chargePointModel": "Simulator"}),
                    ),
                    _ => return Some(json!({"status": "NotImplemented"})),
                }
                json!({"status": "Accepted"})
            }
            "SetChargingProfile" => self.set_profile(req),
            "ClearChargingProfile" => self.clear_profile(req),
            "ChangeAvailability" | "ChangeConfiguration" | "ClearCache" => {
                json!({"status": "Accepted"})
            }
            "UnlockConnector" => json!({"status": "Unlocked"}),
            "GetConfiguration" => {
                let wanted: Vec<&str> = req["key"]
                    .as_array()
                    .map(|k| k.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let known: Vec<Value> = self
                    .config
                    .iter()
                    .filter(|(k, _)| wanted.is_empty() || wanted.contains(&k.as_str()))
                    .map(|(k, v)| json!({"key": k, "readonly": false, "value": v}))
                    .collect();
                let unknown: Vec<&str> = wanted
                    .iter()
                    .copied()
                    .filter(|w| !self.config.iter().any(|(k, _)| k == w))
                    .collect();
                json!({"configurationKey": known, "unknownKey": unknown})
            }
            "GetDiagnostics" => {
                if let Some(loc) = req["location"].as_str() {
                    tokio::spawn(upload(loc.to_string(), self.id.clone()));
                }
                json!({"fileName": format!("{}-diagnostics.log", self.id)})
            }
            "DataTransfer" => json!({"status": "UnknownVendorId"}),
            _ => return None,
        })
    }
}
