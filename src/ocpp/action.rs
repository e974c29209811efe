//! The OCPP actions the gateway reads or writes, typed: the ones it
//! answers, journals, queues or sends itself, in OCPP 1.6 and 2.0.1. Any
//! other action is relayed by name (`Other`), byte for byte. Pure.
//!
//! An `Action` reads as its name (`Deref<Target = str>`, `== "Heartbeat"`)
//! wherever text is wanted (frames, the journal, logs), and is matched as
//! an enum where the gateway decides something.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

macro_rules! actions {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// An OCPP action name.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum Action {
            $($(#[$doc])* $name,)*
            /// An action the gateway relays without reading it.
            Other(Box<str>),
        }

        impl Action {
            /// The action named `name` (case matters, as in OCPP-J).
            pub fn parse(name: &str) -> Action {
                match name {
                    $(stringify!($name) => Action::$name,)*
                    other => Action::Other(other.into()),
                }
            }

            /// Its name on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Action::$name => stringify!($name),)*
                    Action::Other(s) => s,
                }
            }
        }
    };
}

actions! {
    // A charger's calls (1.6 and 2.0.1).
    Authorize,
    BootNotification,
    DataTransfer,
    DiagnosticsStatusNotification,
    FirmwareStatusNotification,
    Heartbeat,
    LogStatusNotification,
    MeterValues,
    NotifyEvent,
    NotifyReport,
    SecurityEventNotification,
    StartTransaction,
    StatusNotification,
    StopTransaction,
    /// 2.0.1's one transaction message.
    TransactionEvent,
    // Calls to a charger the gateway makes or rewrites.
    ChangeAvailability,
    ChangeConfiguration,
    ClearChargingProfile,
    GetConfiguration,
    GetDiagnostics,
    GetVariables,
    RemoteStartTransaction,
    RemoteStopTransaction,
    RequestStartTransaction,
    RequestStopTransaction,
    Reset,
    SendLocalList,
    SetChargingProfile,
    SetVariables,
    TriggerMessage,
    UnlockConnector,
}

impl Action {
    /// A transaction message: what the outbox holds until the cloud has
    /// answered it (1.6's Start/StopTransaction, 2.0.1's
    /// TransactionEvent; MeterValues only within a transaction, which its
    /// payload tells).
    pub fn is_transaction_message(&self) -> Option<bool> {
        match self {
            Action::StartTransaction | Action::StopTransaction | Action::TransactionEvent => {
                Some(true)
            }
            Action::MeterValues => None,
            _ => Some(false),
        }
    }
}

impl Deref for Action {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Action {
    fn from(s: &str) -> Action {
        Action::parse(s)
    }
}

impl From<String> for Action {
    fn from(s: String) -> Action {
        Action::parse(&s)
    }
}

impl From<Action> for String {
    fn from(a: Action) -> String {
        match a {
            Action::Other(s) => s.into(),
            known => known.as_str().to_string(),
        }
    }
}

impl PartialEq<str> for Action {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Action {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_kept() {
        for name in ["Heartbeat", "TransactionEvent", "RequestStopTransaction"] {
            let a = Action::parse(name);
            assert!(!matches!(a, Action::Other(_)), "{name} is known");
            assert_eq!(a.as_str(), name);
            assert_eq!(a, name);
        }
        let a = Action::parse("VendorThing");
        assert_eq!(a, Action::Other("VendorThing".into()));
        assert_eq!(&*a, "VendorThing");
        assert_eq!(
            Action::parse("heartbeat"),
            Action::Other("heartbeat".into()),
            "OCPP-J names are case-sensitive"
        );
        let json = serde_json::to_string(&Action::StartTransaction).unwrap();
        assert_eq!(json, "\"StartTransaction\"", "stored as its name");
        let back: Action = serde_json::from_str("\"NotifyEvent\"").unwrap();
        assert_eq!(back, Action::NotifyEvent);
        assert_eq!(
            Action::MeterValues.is_transaction_message(),
            None,
            "depends on its payload"
        );
        assert_eq!(
            Action::TransactionEvent.is_transaction_message(),
            Some(true)
        );
        assert_eq!(Action::Heartbeat.is_transaction_message(), Some(false));
    }
}
