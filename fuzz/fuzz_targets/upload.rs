//! The diagnostics upload: a multipart body (its first line is taken as
//! the Content-Type) and the file name it carries.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let content_type = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or_default();
    if let Some((name, bytes)) = chargegate::diagnostics::first_multipart_file(&content_type, body) {
        assert!(bytes.len() <= body.len());
        if let Some(safe) = name.as_deref().and_then(chargegate::diagnostics::safe_name) {
            assert!(!safe.contains('/') && !safe.starts_with('.'), "{safe}");
        }
    }
});
