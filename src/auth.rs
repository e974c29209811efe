//! What the gateway knows about id tags when it answers chargers itself:
//! the authorization cache (site-wide, filled from every IdTagInfo the
//! cloud returns: Authorize, StartTransaction, StopTransaction) and each
//! charger's local authorization list (kept from the cloud's SendLocalList).
//! Tables, write operations and the lookup order: local list, then cache.

use crate::ocpp::Action;
use redb::{ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// id tag → JSON `TagInfo` (site-wide cache).
pub(crate) const CACHE: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_cache");
/// (charger, id tag) → JSON `TagInfo` (the cloud's local list per charger).
pub(crate) const LIST: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("local_list");
/// charger → local list version.
pub(crate) const LIST_VERSION: TableDefinition<&str, i64> =
    TableDefinition::new("local_list_version");

/// What is known of one id tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagInfo {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<String>,
}

impl TagInfo {
    /// Read an OCPP `IdTagInfo` object.
    pub fn from_id_tag_info(v: &Value) -> Option<TagInfo> {
        Some(TagInfo {
            status: v.get("status")?.as_str()?.to_string(),
            expiry: v
                .get("expiryDate")
                .and_then(|e| e.as_str())
                .map(str::to_string),
        })
    }

    /// The status now: an `Accepted` tag past its expiry date is `Expired`.
    pub fn status_at(&self, now: jiff::Timestamp) -> String {
        let expired = self
            .expiry
            .as_deref()
            .and_then(|e| e.parse::<jiff::Timestamp>().ok())
            .is_some_and(|e| e < now);
        if expired && self.status == "Accepted" {
            "Expired".into()
        } else {
            self.status.clone()
        }
    }
}

/// A write on the authorization tables.
#[derive(Debug, Clone)]
pub enum Op {
    /// Remember the cloud's answer for a tag.
    Cache { id_tag: String, info: TagInfo },
    /// Apply a SendLocalList the charger accepted.
    LocalList {
        charger: String,
        version: i64,
        full: bool,
        entries: Vec<(String, Option<TagInfo>)>,
    },
}

pub(crate) struct Tables<'t> {
    pub cache: Table<'t, &'static str, &'static [u8]>,
    pub list: Table<'t, (&'static str, &'static str), &'static [u8]>,
    pub version: Table<'t, &'static str, i64>,
}

impl Tables<'_> {
    pub fn apply(&mut self, op: &Op) -> Result<(), crate::outbox::TableError> {
        match op {
            Op::Cache { id_tag, info } => {
                let v = serde_json::to_vec(info)?;
                self.cache.insert(id_tag.as_str(), v.as_slice())?;
            }
            Op::LocalList {
                charger,
                version,
                full,
                entries,
            } => {
                if *full {
                    let old: Vec<String> = self
                        .list
                        .range((charger.as_str(), "")..)?
                        .map_while(|r| {
                            r.ok()
                                .filter(|(k, _)| k.value().0 == charger.as_str())
                                .map(|(k, _)| k.value().1.to_string())
                        })
                        .collect();
                    for tag in old {
                        self.list.remove((charger.as_str(), tag.as_str()))?;
                    }
                }
                for (tag, info) in entries {
                    match info {
                        Some(info) => {
                            let v = serde_json::to_vec(info)?;
                            self.list
                                .insert((charger.as_str(), tag.as_str()), v.as_slice())?;
                        }
                        None => {
                            self.list.remove((charger.as_str(), tag.as_str()))?;
                        }
                    }
                }
                self.version.insert(charger.as_str(), *version)?;
            }
        }
        Ok(())
    }
}

/// Look a tag up for a charger: its local list wins over the cache.
pub(crate) fn lookup(
    list: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    cache: &impl ReadableTable<&'static str, &'static [u8]>,
    charger: &str,
    id_tag: &str,
) -> Option<TagInfo> {
    if let Ok(Some(v)) = list.get((charger, id_tag)) {
        if let Ok(info) = serde_json::from_slice(v.value()) {
            return Some(info);
        }
    }
    let v = cache.get(id_tag).ok()??;
    serde_json::from_slice(v.value()).ok()
}

/// The cache update an answer to a charger's call carries, if any: 1.6's
/// `idTagInfo` for the request's `idTag`, or 2.0.1's `idTokenInfo` for
/// its `idToken` (Authorize, TransactionEvent). One cache for both: a
/// card's id is the same whichever protocol its charger speaks.
pub fn cache_update(action: &Action, request: &str, answer: &str) -> Option<Op> {
    if !matches!(
        action,
        Action::Authorize
            | Action::StartTransaction
            | Action::StopTransaction
            | Action::TransactionEvent
    ) {
        return None;
    }
    // The answer first: it is small, and without tag info the request
    // need not be read at all.
    let ans: Value = serde_json::from_str(answer).ok()?;
    let info = info_of(&ans)?;
    let req: Value = serde_json::from_str(request).ok()?;
    let (id_tag, _) = tag_and_info(&req)?;
    Some(Op::Cache { id_tag, info })
}

/// The id tag of a 1.6 request or list entry (`idTag`), or the token of a
/// 2.0.1 one (`idToken.idToken`), with the entry's own info if it has one.
fn tag_and_info(v: &Value) -> Option<(String, Option<TagInfo>)> {
    let tag = match v.get("idToken") {
        Some(t) => t.get("idToken")?.as_str()?,
        None => v.get("idTag")?.as_str()?,
    };
    Some((tag.to_string(), info_of(v)))
}

/// 1.6's `idTagInfo` or 2.0.1's `idTokenInfo` (whose expiry is
/// `cacheExpiryDateTime`).
fn info_of(v: &Value) -> Option<TagInfo> {
    if let Some(i) = v.get("idTokenInfo") {
        return Some(TagInfo {
            status: i.get("status")?.as_str()?.to_string(),
            expiry: i
                .get("cacheExpiryDateTime")
                .and_then(|e| e.as_str())
                .map(str::to_string),
        });
    }
    TagInfo::from_id_tag_info(v.get("idTagInfo")?)
}

/// The local list update of a SendLocalList request (1.6 `listVersion`,
/// 2.0.1 `versionNumber`).
pub fn local_list_update(charger: &str, request: &Value) -> Option<Op> {
    let version = request
        .get("listVersion")
        .or_else(|| request.get("versionNumber"))?
        .as_i64()?;
    let full = request.get("updateType")?.as_str()? == "Full";
    let entries = request
        .get("localAuthorizationList")
        .and_then(|l| l.as_array())
        .map(|l| l.iter().filter_map(tag_and_info).collect())
        .unwrap_or_default();
    Some(Op::LocalList {
        charger: charger.to_string(),
        version,
        full,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_updates_come_from_id_tag_info() {
        let op = cache_update(
            &Action::Authorize,
            r#"{"idTag":"T1"}"#,
            r#"{"idTagInfo":{"status":"Blocked"}}"#,
        )
        .unwrap();
        assert!(
            matches!(op, Op::Cache { id_tag, info } if id_tag == "T1" && info.status == "Blocked")
        );
        assert!(cache_update(
            &Action::StopTransaction,
            r#"{"transactionId":1}"#,
            r#"{"idTagInfo":{"status":"Accepted"}}"#
        )
        .is_none());
        assert!(cache_update(&Action::Heartbeat, "{}", "{}").is_none());
        // 2.0.1: the token's id, and its cache expiry.
        let op = cache_update(
            &Action::TransactionEvent,
            r#"{"eventType":"Started","idToken":{"idToken":"T2","type":"ISO14443"}}"#,
            r#"{"idTokenInfo":{"status":"Invalid","cacheExpiryDateTime":"2030-01-01T00:00:00Z"}}"#,
        )
        .unwrap();
        assert!(
            matches!(&op, Op::Cache { id_tag, info } if id_tag == "T2" && info.status == "Invalid" && info.expiry.as_deref() == Some("2030-01-01T00:00:00Z")),
            "{op:?}"
        );
        assert!(cache_update(
            &Action::TransactionEvent,
            r#"{"eventType":"Updated"}"#,
            r#"{"idTokenInfo":{"status":"Accepted"}}"#
        )
        .is_none());
    }

    #[test]
    fn expired_tags_are_not_accepted() {
        let info = TagInfo {
            status: "Accepted".into(),
            expiry: Some("2020-01-01T00:00:00Z".into()),
        };
        assert_eq!(info.status_at(jiff::Timestamp::now()), "Expired");
        let info = TagInfo {
            status: "Accepted".into(),
            expiry: Some("2999-01-01T00:00:00Z".into()),
        };
        assert_eq!(info.status_at(jiff::Timestamp::now()), "Accepted");
    }

    #[test]
    fn send_local_list_is_read() {
        let req = serde_json::json!({"listVersion": 3, "updateType": "Differential", "localAuthorizationList": [
            {"idTag": "A", "idTagInfo": {"status": "Accepted"}}, {"idTag": "B"}]});
        let Some(Op::LocalList {
            version,
            full,
            entries,
            ..
        }) = local_list_update("CP", &req)
        else {
            panic!()
        };
        assert_eq!((version, full), (3, false));
        assert_eq!(entries[0].1.as_ref().unwrap().status, "Accepted");
        assert!(entries[1].1.is_none(), "no idTagInfo: remove the tag");
        let req = serde_json::json!({"versionNumber": 4, "updateType": "Full", "localAuthorizationList": [
            {"idToken": {"idToken": "C", "type": "ISO14443"}, "idTokenInfo": {"status": "Blocked"}}]});
        let Some(Op::LocalList {
            version, entries, ..
        }) = local_list_update("CP", &req)
        else {
            panic!("a 2.0.1 list is read")
        };
        assert_eq!((version, entries[0].0.as_str()), (4, "C"));
        assert_eq!(entries[0].1.as_ref().unwrap().status, "Blocked");
    }
}
