//! OCPP protocol code, pure and unit-tested without sockets: OCPP-J framing
//! (`frame`), the actions it reads or writes (`action`), the OCPP 1.6 payloads the gateway reads (`messages`), the
//! 2.0.1 ones it journals (`v201`) and the answers it gives as a local
//! controller (`local`).

pub mod action;
pub mod frame;
pub mod local;
pub mod messages;
pub mod schema;
pub mod v201;

use serde::{Deserialize, Serialize};

pub use self::action::Action;

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

    /// The token's protocol, if the gateway speaks it.
    pub fn parse(token: &str) -> Option<Protocol> {
        [Protocol::Ocpp16, Protocol::Ocpp201]
            .into_iter()
            .find(|p| token.trim().eq_ignore_ascii_case(p.as_str()))
    }

    /// The protocols a client offers (`a, b, c`) that the gateway speaks,
    /// in the client's order of preference, each once.
    pub fn offered(header: &str) -> Vec<Protocol> {
        let mut out = Vec::new();
        for p in header.split(',').filter_map(Protocol::parse) {
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    /// The protocol the gateway picks when the cloud does not choose (no
    /// cloud configured, or it did not answer in time): the charger's first
    /// choice among those the gateway holds by itself (`holds`: 1.6, and
    /// 2.0.1 in offline mode `hold`), else its first choice.
    pub fn choose_alone(
        offered: &[Protocol],
        holds: impl Fn(Protocol) -> bool,
    ) -> Option<Protocol> {
        offered
            .iter()
            .copied()
            .find(|p| holds(*p))
            .or_else(|| offered.first().copied())
    }

    /// The `Sec-WebSocket-Protocol` header value offering `list` in order.
    pub fn header(list: &[Protocol]) -> String {
        list.iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_keep_the_chargers_order_and_the_gateway_chooses_what_it_can_answer() {
        use Protocol::*;
        assert_eq!(
            Protocol::offered("ocpp2.0.1, ocpp1.6"),
            vec![Ocpp201, Ocpp16]
        );
        assert_eq!(
            Protocol::offered("ocpp1.6,OCPP2.0.1,ocpp1.6"),
            vec![Ocpp16, Ocpp201]
        );
        assert_eq!(Protocol::offered("ocpp2.1, ocpp2.0.1"), vec![Ocpp201]);
        assert_eq!(Protocol::offered("ocpp1.5, ocpp2.0"), vec![]);
        assert_eq!(Protocol::offered(""), vec![]);
        let only_16 = |p| p == Ocpp16;
        assert_eq!(
            Protocol::choose_alone(&[Ocpp201, Ocpp16], only_16),
            Some(Ocpp16)
        );
        assert_eq!(Protocol::choose_alone(&[Ocpp201], only_16), Some(Ocpp201));
        assert_eq!(Protocol::choose_alone(&[], only_16), None);
        let both = |_| true;
        assert_eq!(
            Protocol::choose_alone(&[Ocpp201, Ocpp16], both),
            Some(Ocpp201)
        );
        assert_eq!(Protocol::header(&[Ocpp201, Ocpp16]), "ocpp2.0.1, ocpp1.6");
    }
}
