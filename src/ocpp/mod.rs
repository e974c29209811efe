//! OCPP protocol code, pure and unit-tested without sockets: OCPP-J framing
//! (`frame`), the OCPP 1.6 payloads the gateway reads (`messages`) and the
//! answers it gives as a local controller (`local`).

pub mod frame;
pub mod local;
pub mod messages;

use serde::{Deserialize, Serialize};

/// The WebSocket subprotocol a charger speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// OCPP 1.6J: understood fully.
    #[serde(rename = "ocpp1.6")]
    Ocpp16,
    /// OCPP 2.0.1: relayed as-is.
    #[serde(rename = "ocpp2.0.1")]
    Ocpp201,
}

impl Protocol {
    /// The subprotocol token used in `Sec-WebSocket-Protocol`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Ocpp16 => "ocpp1.6",
            Protocol::Ocpp201 => "ocpp2.0.1",
        }
    }

    /// Pick the protocol from a client's offered list (`a, b, c`), preferring
    /// 1.6, which the gateway understands fully.
    pub fn negotiate(offered: &str) -> Option<Protocol> {
        let offered: Vec<&str> = offered.split(',').map(str::trim).collect();
        [Protocol::Ocpp16, Protocol::Ocpp201]
            .into_iter()
            .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_16_and_refuses_others() {
        assert_eq!(
            Protocol::negotiate("ocpp2.0.1, ocpp1.6"),
            Some(Protocol::Ocpp16)
        );
        assert_eq!(Protocol::negotiate("ocpp2.0.1"), Some(Protocol::Ocpp201));
        assert_eq!(Protocol::negotiate("ocpp1.5, ocpp2.0"), None);
        assert_eq!(Protocol::negotiate(""), None);
    }
}
