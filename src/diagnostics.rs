//! Chargers' own diagnostics files (GetDiagnostics): the gateway hands a
//! charger a one-time upload URL on its own small HTTP listener, takes the
//! upload (raw PUT/POST body or the first file of a multipart form), keeps
//! it under `{data_dir}/diagnostics/{charger}/`, and lists and serves it
//! through the local API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::any;
use axum::Router;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::journal::Journal;

/// How long an upload URL stays valid.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// One stored diagnostics file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileInfo {
    pub file: String,
    pub bytes: u64,
    pub modified_ms: i64,
}

/// Outstanding upload URLs: token → (charger, issued).
#[derive(Clone, Default)]
pub struct Uploads {
    tokens: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl Uploads {
    /// A fresh one-time token for a charger's upload.
    pub fn issue(&self, charger: &str) -> Result<String, crate::password::RandomError> {
        // 18 random bytes: 144 bits, 24 URL-safe characters.
        let bytes: [u8; 18] = crate::password::random()?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        t.retain(|_, (_, at)| at.elapsed() < TOKEN_LIFETIME);
        t.insert(token.clone(), (charger.to_string(), Instant::now()));
        Ok(token)
    }

    fn take(&self, token: &str) -> Option<String> {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        t.remove(token)
            .filter(|(_, at)| at.elapsed() < TOKEN_LIFETIME)
            .map(|(c, _)| c)
    }
}

/// The directory of a charger's files.
pub fn dir_of(data_dir: &Path, charger: &str) -> PathBuf {
    let safe: String = charger
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    data_dir.join("diagnostics").join(safe)
}

/// A file name safe to store and serve: no paths, no hidden files.
pub fn safe_name(name: &str) -> Option<String> {
    let name = name.rsplit(['/', '\\']).next()?.trim();
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c));
    ok.then(|| name.to_string())
}

/// The first file part of a `multipart/form-data` body: (file name, bytes).
pub fn first_multipart_file(content_type: &str, body: &[u8]) -> Option<(Option<String>, Vec<u8>)> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let delim = format!("--{boundary}");
    let start = find(body, delim.as_bytes())? + delim.len();
    let rest = &body[start..];
    let head_end = find(rest, b"\r\n\r\n")?;
    let headers = String::from_utf8_lossy(&rest[..head_end]);
    let file = headers
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
        .flat_map(|l| l.split(';'))
        .find_map(|p| p.trim().strip_prefix("filename="))
        .map(|f| f.trim_matches('"').to_string());
    let content = &rest[head_end + 4..];
    let end = find(content, format!("\r\n{delim}").as_bytes())?;
    Some((file, content[..end].to_vec()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A charger's stored files, newest first.
pub fn list(data_dir: &Path, charger: &str) -> Vec<FileInfo> {
    let mut out: Vec<FileInfo> = std::fs::read_dir(dir_of(data_dir, charger))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            let modified_ms = m
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_millis() as i64;
            Some(FileInfo {
                file: e.file_name().to_string_lossy().into_owned(),
                bytes: m.len(),
                modified_ms,
            })
        })
        .collect();
    out.sort_by(|a, b| b.modified_ms.cmp(&a.modified_ms).then(b.file.cmp(&a.file)));
    out
}

#[derive(Clone)]
struct Srv {
    uploads: Uploads,
    data_dir: PathBuf,
    journal: Journal,
    max_bytes: usize,
}

/// Serve uploads until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    uploads: Uploads,
    data_dir: PathBuf,
    journal: Journal,
    max_bytes: usize,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let app = Router::new()
        .route("/diagnostics/{token}", any(upload))
        .route("/diagnostics/{token}/{*file}", any(upload))
        .layer(DefaultBodyLimit::max(max_bytes))
        .with_state(Srv {
            uploads,
            data_dir,
            journal,
            max_bytes,
        });
    crate::http::serve(listener, app, BOUNDS, "diagnostics upload", shutdown).await
}

/// The upload listener's bounds: chargers upload one file at a time, now
/// and then; anyone else gets little.
const BOUNDS: crate::http::Bounds = crate::http::Bounds {
    max_connections: 16,
    max_per_address: 4,
    header_timeout: Duration::from_secs(10),
};

/// The most an upload's body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(300);

async fn upload(
    State(s): State<Srv>,
    UrlPath(params): UrlPath<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> (StatusCode, String) {
    // The token first: a made-up one costs no body read.
    let Some(charger) = params.get("token").and_then(|t| s.uploads.take(t)) else {
        return (
            StatusCode::FORBIDDEN,
            "unknown or expired upload URL\n".into(),
        );
    };
    let body =
        match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, s.max_bytes)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                return (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("cannot read the upload: {e}\n"),
                )
            }
            Err(_) => {
                return (
                    StatusCode::REQUEST_TIMEOUT,
                    "the upload took too long\n".into(),
                )
            }
        };
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (name, data) = match ctype
        .starts_with("multipart/form-data")
        .then(|| first_multipart_file(ctype, &body))
        .flatten()
    {
        Some((name, data)) => (name, data),
        None => (None, body.to_vec()),
    };
    let name = name
        .or_else(|| params.get("file").cloned())
        .and_then(|n| safe_name(&n))
        .unwrap_or_else(|| "diagnostics.bin".into());
    let stamp = crate::clock::now_rfc3339().replace([':', '.'], "");
    let file = format!("{stamp}-{name}");
    let dir = dir_of(&s.data_dir, &charger);
    let write = async {
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::write(dir.join(&file), &data).await
    };
    if let Err(e) = write.await {
        log::error!(charger_id = charger.as_str(); "cannot store diagnostics upload: {e}");
        return (
            StatusCode::INSUFFICIENT_STORAGE,
            "cannot store the file\n".into(),
        );
    }
    let ev = Event::DiagnosticsUploaded {
        file: file.clone(),
        bytes: data.len() as u64,
    };
    s.journal.record(Some(&charger), ev).await;
    (StatusCode::OK, format!("stored {file}\n"))
}

/// The upload URL for a charger that reached the gateway at `gateway_ip`.
pub fn location(gateway_ip: std::net::IpAddr, upload: SocketAddr, token: &str) -> String {
    format!(
        "http://{}/diagnostics/{token}/",
        SocketAddr::new(gateway_ip, upload.port())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_uploads_are_unpacked() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"diag.tar.gz\"\r\nContent-Type: application/octet-stream\r\n\r\n\x00\x01binary\r\n--XyZ--\r\n";
        let (name, data) = first_multipart_file("multipart/form-data; boundary=XyZ", body).unwrap();
        assert_eq!(
            (name.as_deref(), data.as_slice()),
            (Some("diag.tar.gz"), &b"\x00\x01binary"[..])
        );
        assert!(first_multipart_file("multipart/form-data", body).is_none());
    }

    #[test]
    fn file_names_cannot_escape() {
        assert_eq!(safe_name("../../etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(safe_name("a/b/diag.log").as_deref(), Some("diag.log"));
        assert!(safe_name(".hidden").is_none());
        assert!(safe_name("bad name").is_none());
        assert!(safe_name("").is_none());
    }

    #[test]
    fn tokens_are_one_time() {
        let u = Uploads::default();
        let t = u.issue("CP").unwrap();
        assert_eq!(t.len(), 24);
        assert_ne!(t, u.issue("CP").unwrap(), "tokens differ");
        assert_eq!(u.take(&t).as_deref(), Some("CP"));
        assert!(u.take(&t).is_none());
    }
}
