//! Smart charging's state as the API, the CLI and MQTT show it: the load
//! management mode, the meter, and each charger's limit with its reason.
//! Written by the engine, read by everyone else.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::meter::MeterStatus;

/// Load management's state, as the API shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SmartStatus {
    /// `off` (no `[load]` section), `sharing` or `fallback`.
    pub load: String,
    /// Amperes per phase the chargers may use together (sharing only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_a: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meter: Option<MeterStatus>,
    /// Each connected charger's limit now.
    pub chargers: BTreeMap<String, ChargerLimit>,
}

/// One charger's limit now and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChargerLimit {
    pub limit_a: f64,
    pub reason: String,
}

/// Shared view of the engine for the API.
pub type StatusHandle = Arc<Mutex<SmartStatus>>;
