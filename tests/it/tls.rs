//! OCPP Security Profiles 2 and 3 on the charger side, with certificates
//! made by the test (rcgen): the right ones get in; a wrong CA, an expired
//! certificate, a certificate for another charge point, a missing one and a
//! downgrade to plain ws:// do not.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::harness::*;

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

pub fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// (certificate PEM, key PEM) signed by `ca`.
pub fn leaf(ca: &Ca, cn: &str, server: bool, expired: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    if server {
        p.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    }
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    (
        p.signed_by(&key, &ca.issuer).unwrap().pem(),
        key.serialize_pem(),
    )
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Connect over wss:// trusting `trust`, presenting `client` and Basic
/// auth `password`; Ok when the gateway answers a BootNotification.
async fn wss(
    addr: std::net::SocketAddr,
    id: &str,
    trust: &str,
    client: Option<&(String, String)>,
    password: Option<&str>,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(trust.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let cfg = match client {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(|c| c.unwrap())
                    .collect();
            b.with_client_auth_cert(
                chain,
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap()
        }
        None => b.with_no_client_auth(),
    };
    let mut req = format!("wss://{addr}/ocpp/{id}")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("ocpp1.6"),
    );
    if let Some(pw) = password {
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&chargegate::upstream::basic_auth(id, pw)).unwrap(),
        );
    }
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(cfg));
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r) => {
                    format!("HTTP {}", r.status().as_u16())
                }
                e => e.to_string(),
            })?;
    let mut c = Charger {
        ws,
        next: 0,
        protocol: None,
    };
    let a = c.call("BootNotification", boot()).await;
    (a[0] == 3)
        .then_some(())
        .ok_or_else(|| format!("no answer: {a}"))
}

#[tokio::test]
async fn security_profiles_2_and_3_let_in_the_right_certificates_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = ca("ChargeGate test CA");
    let rogue = ca("Rogue CA");
    let (server_cert, server_key) = leaf(&ca1, "gateway", true, false);
    let cp3 = leaf(&ca1, "CP-3", false, false);
    let other = leaf(&ca1, "CP-OTHER", false, false);
    let expired = leaf(&ca1, "CP-3", false, true);
    let forged = leaf(&rogue, "CP-3", false, false);
    let cert = write(dir.path(), "server.pem", &server_cert);
    let key = write(dir.path(), "server.key", &server_key);
    let client_ca = write(dir.path(), "chargers-ca.pem", &ca1.pem);
    let text = config_text(&dir.path().join("data"), None, "").replace(
        "call_timeout_secs = 3\n",
        &format!(
            "call_timeout_secs = 3\ntls_listen = \"127.0.0.1:0\"\ntls_cert = {cert:?}\ntls_key = {key:?}\nclient_ca = {client_ca:?}\n"
        ),
    ) + "[[charger]]\nid = \"CP-2\"\npassword = \"profile2-secret-key\"\nsecurity_profile = 2\n[[charger]]\nid = \"CP-3\"\nsecurity_profile = 3\n";
    let cfg = chargegate::config::Config::parse(&text, "t.toml").unwrap();
    let gw = chargegate::daemon::start(cfg).await.unwrap();
    let tls = gw.tls_addr.unwrap();
    let pw = Some("profile2-secret-key");

    // Profile 2: the gateway's certificate, Basic auth.
    wss(tls, "CP-2", &ca1.pem, None, pw).await.unwrap();
    assert_eq!(
        wss(tls, "CP-2", &ca1.pem, None, Some("wrong-password-123")).await,
        Err("HTTP 401".into())
    );
    let e = wss(tls, "CP-2", &rogue.pem, None, pw).await.unwrap_err();
    assert!(
        e.to_lowercase().contains("certificate"),
        "a charger that does not trust the gateway's CA: {e}"
    );
    // Downgrade to Profile 1: plain ws:// with the right password.
    let plain = connect_status(
        &format!("ws://{}/ocpp/CP-2", gw.ocpp_addr),
        Some("ocpp1.6"),
        Some(&chargegate::upstream::basic_auth(
            "CP-2",
            "profile2-secret-key",
        )),
    )
    .await;
    assert_eq!(plain.err(), Some(403));

    // Profile 3: a client certificate for this very charge point.
    wss(tls, "CP-3", &ca1.pem, Some(&cp3), None).await.unwrap();
    assert_eq!(
        wss(tls, "CP-3", &ca1.pem, None, None).await,
        Err("HTTP 403".into()),
        "no certificate"
    );
    assert_eq!(
        wss(tls, "CP-3", &ca1.pem, Some(&other), None).await,
        Err("HTTP 403".into()),
        "another charger's"
    );
    assert!(
        wss(tls, "CP-3", &ca1.pem, Some(&expired), None)
            .await
            .is_err(),
        "expired"
    );
    assert!(
        wss(tls, "CP-3", &ca1.pem, Some(&forged), None)
            .await
            .is_err(),
        "signed by another CA"
    );
    // A Profile 2 charger's certificate does not make it CP-3 either way round.
    assert!(
        wss(tls, "CP-2", &ca1.pem, Some(&cp3), None).await.is_err(),
        "a certificate is no password"
    );

    // Refusals are journaled as the gateway sees them, maybe after the
    // client already gave up.
    let wanted = [
        "must connect with wss://",
        "no client certificate",
        "is for \"CP-OTHER\"",
        "TLS handshake failed",
    ];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let refusals: Vec<String> = gw
            .journal
            .query(&Default::default())
            .unwrap()
            .into_iter()
            .filter(|r| r.event.kind() == "Refused")
            .map(|r| r.event.summary())
            .collect();
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|w| !refusals.iter().any(|r| r.contains(w)))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing:?} not in {refusals:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    gw.stop().await;
}

/// The cloud side over wss:// with a client certificate per charger
/// (clouds on Profile 3), against a second gateway playing the cloud; and
/// a cloud certificate the gateway does not trust, journaled as such.
#[tokio::test]
async fn the_cloud_link_presents_the_chargers_client_certificate_and_checks_the_clouds() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = ca("Cloud CA");
    let rogue = ca("Rogue CA");
    let (server_cert, server_key) = leaf(&ca1, "cloud", true, false);
    let (cp_cert, cp_key) = leaf(&ca1, "CP-U", false, false);
    let p = |n: &str, t: &str| write(dir.path(), n, t);
    let (cert, key, ca_file, rogue_file) = (
        p("cloud.pem", &server_cert),
        p("cloud.key", &server_key),
        p("ca.pem", &ca1.pem),
        p("rogue.pem", &rogue.pem),
    );
    let (cp_cert, cp_key) = (p("cp.pem", &cp_cert), p("cp.key", &cp_key));

    // The "cloud": a gateway that requires Profile 3 from CP-U.
    let cloud_text = config_text(&dir.path().join("cloud-data"), None, "").replace(
        "call_timeout_secs = 3\n",
        &format!("call_timeout_secs = 3\ntls_listen = \"127.0.0.1:0\"\ntls_cert = {cert:?}\ntls_key = {key:?}\nclient_ca = {ca_file:?}\n"),
    ) + "[[charger]]\nid = \"CP-U\"\nsecurity_profile = 3\n";
    let cloud = chargegate::daemon::start(
        chargegate::config::Config::parse(&cloud_text, "cloud.toml").unwrap(),
    )
    .await
    .unwrap();
    let url = format!("wss://{}/ocpp", cloud.tls_addr.unwrap());

    let site = |trust: &std::path::Path, data: &str| {
        config_text(&dir.path().join(data), Some(&url), "").replace(
            "backoff_max_secs = 1\n",
            &format!("backoff_max_secs = 1\nca_file = {trust:?}\n"),
        ) + &format!(
            "[[charger]]\nid = \"CP-U\"\nupstream_cert = {cp_cert:?}\nupstream_key = {cp_key:?}\n"
        )
    };
    let gw = chargegate::daemon::start(
        chargegate::config::Config::parse(&site(&ca_file, "a"), "a.toml").unwrap(),
    )
    .await
    .unwrap();
    let mut cp = Charger::connect(&format!("ws://{}/ocpp/CP-U", gw.ocpp_addr)).await;
    let q = chargegate::journal::Query {
        charger: Some("CP-U".into()),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !gw
        .journal
        .query(&q)
        .unwrap()
        .iter()
        .any(|r| r.event.kind() == "Connect" && r.event.summary().contains("Cloud"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:#?}",
            gw.journal.query(&q).unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        cp.call("BootNotification", boot()).await[2]["status"],
        "Accepted"
    );
    // The cloud saw CP-U connect with its certificate.
    assert!(cloud
        .journal
        .query(&q)
        .unwrap()
        .iter()
        .any(|r| r.event.kind() == "Connect"));
    gw.stop().await;

    // A site that does not trust the cloud's CA says so, in words.
    let gw = chargegate::daemon::start(
        chargegate::config::Config::parse(&site(&rogue_file, "b"), "b.toml").unwrap(),
    )
    .await
    .unwrap();
    let _cp = Charger::connect(&format!("ws://{}/ocpp/CP-U", gw.ocpp_addr)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let evs = gw.journal.query(&q).unwrap();
        if let Some(r) = evs.iter().find(|r| r.event.kind() == "Disconnect") {
            let s = r.event.summary();
            assert!(
                s.contains("CERTIFICATE") && s.to_lowercase().contains("certificate"),
                "{s}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{evs:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    gw.stop().await;

    // A mirror on Profile 3: a standalone site mirrors CP-U to the same
    // "cloud", presenting the charger's own certificate to it.
    let mirrored = config_text(&dir.path().join("m"), None, "")
        + &format!(
            "[[mirror]]\nname = \"p3\"\nurl = {url:?}\nca_file = {ca_file:?}\nbackoff_min_secs = 0\nbackoff_max_secs = 1\n[mirror.certs]\n\"CP-U\" = {{ cert = {cp_cert:?}, key = {cp_key:?} }}\n"
        );
    let before = cloud
        .journal
        .query(&q)
        .unwrap()
        .iter()
        .filter(|r| r.event.kind() == "Connect")
        .count();
    let gw =
        chargegate::daemon::start(chargegate::config::Config::parse(&mirrored, "m.toml").unwrap())
            .await
            .unwrap();
    let _cp = Charger::connect(&format!("ws://{}/ocpp/CP-U", gw.ocpp_addr)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while cloud
        .journal
        .query(&q)
        .unwrap()
        .iter()
        .filter(|r| r.event.kind() == "Connect")
        .count()
        <= before
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mirror never connected with CP-U's certificate: {:#?}",
            gw.journal.query(&q).unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let site = gw.journal.query(&q).unwrap();
    assert!(
        site.iter().any(|r| r.event.kind() == "MirrorConnect"),
        "{site:#?}"
    );
    gw.stop().await;
    cloud.stop().await;
}
