//! Refusals at the handshake and malformed frames.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use crate::harness::*;

#[tokio::test]
async fn unknown_chargers_wrong_passwords_and_bad_subprotocols_are_refused() {
    let extra = "[[charger]]\nid = \"CP-K\"\npassword = \"0123456789abcdef\"\n";
    // The harness allows unknown chargers; this gateway does not.
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&dir.path().join("data"), None, extra).replace(
        "allow_unknown_chargers = true",
        "allow_unknown_chargers = false",
    );
    let cfg = chargegate::config::Config::parse(&text, "t.toml").unwrap();
    let strict = chargegate::daemon::start(cfg).await.unwrap();
    let url = |id: &str| format!("ws://{}/ocpp/{id}", strict.ocpp_addr);

    assert_eq!(
        connect_status(&url("CP-X"), Some("ocpp1.6"), None)
            .await
            .err(),
        Some(404)
    );
    let wrong = chargegate::upstream::basic_auth("CP-K", "not-the-password");
    assert_eq!(
        connect_status(&url("CP-K"), Some("ocpp1.6"), Some(&wrong))
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        connect_status(&url("CP-K"), Some("ocpp1.6"), None)
            .await
            .err(),
        Some(401)
    );
    let right = chargegate::upstream::basic_auth("CP-K", "0123456789abcdef");
    assert_eq!(
        connect_status(&url("CP-K"), Some("ocpp1.5"), Some(&right))
            .await
            .err(),
        Some(400)
    );
    assert!(connect_status(&url("CP-K"), Some("ocpp1.6"), Some(&right))
        .await
        .is_ok());
    let bad_path = format!("ws://{}/elsewhere/CP-K", strict.ocpp_addr);
    assert_eq!(
        connect_status(&bad_path, Some("ocpp1.6"), Some(&right))
            .await
            .err(),
        Some(404)
    );

    // Refusals of a known charger are in its log; unknown ids do not get a
    // charger entry. (The second failed login from the same address within
    // a minute is counted, not journaled.)
    let q = chargegate::journal::Query {
        kinds: vec!["Refused".into()],
        ..Default::default()
    };
    let mut refused = Vec::new();
    for _ in 0..50 {
        refused = strict.journal.query(&q).unwrap();
        if refused.len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert!(refused.iter().any(|r| r.charger.as_deref() == Some("CP-K")));
    assert!(!strict.journal.state().chargers.contains_key("CP-X"));
    strict.stop().await;
}

#[tokio::test]
async fn malformed_frames_get_the_spec_error_and_other_chargers_carry_on() {
    let mut csms = Csms::start(default_answers()).await;
    let gw = Gateway::start(Some(&csms.url()), "").await;
    let mut bad = Charger::connect(&gw.url("CP-BAD")).await;
    let mut good = Charger::connect(&gw.url("CP-GOOD")).await;
    csms.next_connect().await;
    csms.next_connect().await;

    let cases: &[(&str, Option<(&str, &str)>)] = &[
        ("this is not json", Some(("-1", "FormationViolation"))),
        (r#"{"an":"object"}"#, Some(("-1", "FormationViolation"))),
        (r#"[2,"m1","Heartbeat"]"#, Some(("m1", "FormationViolation"))),
        (r#"[2,"m2","Heartbeat",[1,2]]"#, Some(("m2", "FormationViolation"))),
        (r#"[2,17,"Heartbeat",{}]"#, Some(("-1", "FormationViolation"))),
        (r#"[7,"m3",{}]"#, Some(("m3", "ProtocolError"))),
        (r#"[3,"m4"]"#, None),                    // broken CALLRESULT: never answered
        (r#"[3,"no-such-call",{}]"#, None),       // result for an unknown call: journaled, dropped
        ("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", Some(("-1", "FormationViolation"))),
    ];
    for (text, expect) in cases {
        bad.send(text).await;
        if let Some((id, code)) = expect {
            let v: Value = serde_json::from_str(&bad.recv().await).unwrap();
            assert_eq!(
                (v[0].as_i64(), v[1].as_str(), v[2].as_str()),
                (Some(4), Some(*id), Some(*code)),
                "for {text}"
            );
        }
        // The well-behaved charger is unaffected, and so is the bad one's link.
        let a = good.call("Heartbeat", json!({})).await;
        assert_eq!(a[0], 3);
    }
    let a = bad.call("Heartbeat", json!({})).await;
    assert_eq!(a[0], 3, "the bad charger's connection still works");
    // Each code's first error is journaled, the rest counted (one record
    // a minute) and the count journaled when the connection ends.
    bad.close().await;
    let q = chargegate::journal::Query {
        charger: Some("CP-BAD".into()),
        ..Default::default()
    };
    let errors = errors_accounted(gw.journal(), &q, cases.len()).await;
    assert_eq!(errors, cases.len(), "every bad frame accounted for");
    let records = gw.wait_count("CP-BAD", "ProtocolError", 1).await;
    assert!(
        records < cases.len(),
        "repeats counted, not journaled each: {records}"
    );

    // A broken frame from the cloud is answered to the cloud, never relayed.
    csms.send("CP-GOOD", r#"[2,"z1","Reset"]"#);
    loop {
        let f = csms.next_frame("CP-GOOD").await;
        let v: Value = serde_json::from_str(&f).unwrap();
        if v[0] == 4 {
            assert_eq!(
                (v[1].as_str(), v[2].as_str()),
                (Some("z1"), Some("FormationViolation"))
            );
            break;
        }
    }
    gw.wait_event("CP-GOOD", "ProtocolError", |e| e["from"] == "cloud")
        .await;
}

#[tokio::test]
async fn an_oversized_message_closes_only_that_charger() {
    let gw = Gateway::start(None, "").await;
    let mut big = Charger::connect(&gw.url("CP-BIG")).await;
    let mut ok = Charger::connect(&gw.url("CP-OK")).await;
    let huge = format!(
        r#"[2,"x","DataTransfer",{{"vendorId":"v","data":"{}"}}]"#,
        "a".repeat(200_000)
    );
    let _ = futures_util::SinkExt::send(
        &mut big.ws,
        tokio_tungstenite::tungstenite::Message::text(huge),
    )
    .await;
    let code = big.closed().await;
    assert!(
        code.is_none() || code == Some(1009),
        "closed with Message Too Big or dropped: {code:?}"
    );
    assert_eq!(ok.call("Heartbeat", json!({})).await[0], 3);
}

/// A gateway with tight limits, started from the harness's config.
async fn limited(extra_ocpp: &str) -> (chargegate::daemon::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&dir.path().join("data"), None, "").replace(
        "call_timeout_secs = 3\n",
        &format!("call_timeout_secs = 3\nhandshake_timeout_secs = 1\n{extra_ocpp}"),
    );
    let cfg = chargegate::config::Config::parse(&text, "t.toml").unwrap();
    (chargegate::daemon::start(cfg).await.unwrap(), dir)
}

#[tokio::test]
async fn a_flooding_charger_is_rate_limited_then_closed_while_others_carry_on() {
    let (gw, _dir) = limited("rate_limit_per_sec = 50\nrate_limit_burst = 50\n").await;
    let url = |id: &str| format!("ws://{}/ocpp/{id}", gw.ocpp_addr);
    let mut normal = Charger::connect(&url("CP-N")).await;
    normal.call("BootNotification", boot()).await;
    let mut flood = Charger::connect(&url("CP-F")).await;
    // 2,000 CALLs without waiting for answers.
    for i in 0..2000 {
        flood
            .send(&json!([2, format!("f{i}"), "Heartbeat", {}]).to_string())
            .await;
    }
    let (mut results, mut limited_errors) = (0, 0);
    loop {
        match tokio::time::timeout(WAIT, flood.ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v[0].as_i64() {
                    Some(3) => results += 1,
                    Some(4) if v[2] == "GenericError" => {
                        assert!(v[3].as_str().unwrap().contains("rate limit"), "{v}");
                        limited_errors += 1;
                    }
                    _ => panic!("unexpected {v}"),
                }
            }
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f)))) => {
                assert_eq!(f.map(|f| u16::from(f.code)), Some(1008), "policy violation");
                break;
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("the flooding charger was not closed: {other:?}"),
        }
    }
    assert!(results >= 50, "the burst went through: {results}");
    assert!(limited_errors > 0, "then CALLERRORs");
    assert!(
        results + limited_errors < 2000,
        "and a close before the end"
    );
    // The well-behaved charger never noticed.
    for _ in 0..20 {
        let a = normal.call("Heartbeat", json!({})).await;
        assert_eq!(a[0], 3, "{a}");
    }
    let ev = gw
        .journal
        .query(&Default::default())
        .unwrap()
        .into_iter()
        .find(|r| r.charger.as_deref() == Some("CP-F") && r.event.kind() == "Disconnect")
        .expect("the close is journaled");
    assert!(
        ev.event.summary().contains("message rate"),
        "{}",
        ev.event.summary()
    );
    gw.stop().await;
}

#[tokio::test]
async fn connections_are_capped_per_address_and_unfinished_handshakes_are_dropped() {
    let (gw, _dir) = limited("max_connections_per_ip = 3\n").await;
    let url = |id: &str| format!("ws://{}/ocpp/{id}", gw.ocpp_addr);
    let _a = Charger::connect(&url("CP-1")).await;
    let _b = Charger::connect(&url("CP-2")).await;
    // A third connection that never finishes its handshake holds a place
    // only until the handshake timeout (1 s here).
    let mut idle = tokio::net::TcpStream::connect(gw.ocpp_addr).await.unwrap();
    // The fourth from the same address is closed at once.
    let over = tokio_tungstenite::connect_async(url("CP-4")).await;
    assert!(
        over.is_err(),
        "a fourth connection from one address is refused"
    );
    let mut buf = [0u8; 16];
    use tokio::io::AsyncReadExt;
    let n = tokio::time::timeout(WAIT, idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the silent connection was closed");
    // Its place is free again.
    let mut c = Charger::connect(&url("CP-4")).await;
    assert_eq!(c.call("Heartbeat", json!({})).await[0], 3);
    let refused = gw
        .journal
        .query(&Default::default())
        .unwrap()
        .into_iter()
        .find(|r| {
            r.event.kind() == "Refused" && r.event.summary().contains("max_connections_per_ip")
        });
    assert!(refused.is_some(), "the refusal is journaled");
    gw.stop().await;
}

/// 10,000 hostile frames in seven classes, as fast as the charger can
/// send them: each gets the answer the spec gives (or, where the spec
/// gives none, none), nothing crashes, and the journal stays readable and
/// holds every one of them.
#[tokio::test]
async fn ten_thousand_hostile_frames_get_the_spec_answer_and_the_journal_stays_whole() {
    let (gw, _dir) = limited("rate_limit_per_sec = 0\n").await;
    let mut cp = Charger::connect(&format!("ws://{}/ocpp/CP-HOSTILE", gw.ocpp_addr)).await;
    let huge_id = "i".repeat(5000);
    let nested = "[".repeat(5000);
    // (frame, expected answer: message id and error code)
    let class = |i: usize| -> (
        tokio_tungstenite::tungstenite::Message,
        Option<(String, &'static str)>,
    ) {
        use tokio_tungstenite::tungstenite::Message;
        match i % 7 {
            0 => (
                Message::text(format!("[2,\"b{i}\",\"Heartbeat\",{{")),
                Some(("-1".into(), "FormationViolation")),
            ),
            1 => (
                Message::text(format!("[2,\"t{i}\",\"Heartbeat\",[{i}]]")),
                Some((format!("t{i}"), "FormationViolation")),
            ),
            2 => (
                Message::text(format!("[2,\"{huge_id}{i}\",\"Heartbeat\",{{}}]")),
                Some(("-1".into(), "FormationViolation")),
            ),
            3 => (
                Message::text(format!("[2,\"u{i}\",\"NoSuchAction{i}\",{{}}]")),
                Some((format!("u{i}"), "NotImplemented")),
            ),
            4 => (
                Message::text(format!("[3,\"nobody-asked-{i}\",{{}}]")),
                None,
            ),
            5 => (
                Message::text(nested.clone()),
                Some(("-1".into(), "FormationViolation")),
            ),
            _ => (
                Message::binary(vec![0xff, 0xfe, 0xfd, (i % 256) as u8]),
                None,
            ),
        }
    };
    let n = 10_000;
    let mut expected = std::collections::VecDeque::new();
    use futures_util::SinkExt;
    for i in 0..n {
        let (msg, want) = class(i);
        cp.ws.feed(msg).await.unwrap();
        if let Some(w) = want {
            expected.push_back(w);
        }
        if i % 100 == 99 {
            cp.ws.flush().await.unwrap();
        }
    }
    cp.ws.flush().await.unwrap();
    let answers = expected.len();
    while let Some((id, code)) = expected.pop_front() {
        let v: Value = serde_json::from_str(&cp.recv().await).unwrap();
        assert_eq!(
            (v[0].as_i64(), v[1].as_str(), v[2].as_str()),
            (Some(4), Some(id.as_str()), Some(code))
        );
    }
    assert!(answers > 7000);
    // Still a working charger connection.
    assert_eq!(cp.call("Heartbeat", json!({})).await[0], 3);
    // Every bad frame is accounted for in the journal, and the journal
    // reads back whole (unknown actions included: answered
    // NotImplemented). One record per code, and one with the count of
    // the rest when the connection ends: ten thousand bad frames cost a
    // few records, not ten thousand.
    cp.close().await;
    let q = chargegate::journal::Query {
        charger: Some("CP-HOSTILE".into()),
        ..Default::default()
    };
    let errors = errors_accounted(&gw.journal, &q, n).await;
    assert_eq!(errors, n);
    let records = gw_wait_count(&gw, "CP-HOSTILE", "ProtocolError", 1).await;
    assert!(records <= 20, "{records} records for {n} bad frames");
    let all = gw
        .journal
        .query(&chargegate::journal::Query {
            charger: Some("CP-HOSTILE".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(
        all.windows(2).all(|w| w[0].seq < w[1].seq),
        "in order, no gaps in reading"
    );
    gw.stop().await;
}

/// Protocol errors the journal accounts for: each record stands for
/// itself and the `repeated` ones before it. Waits until there are `n`.
async fn errors_accounted(
    journal: &chargegate::journal::Journal,
    q: &chargegate::journal::Query,
    n: usize,
) -> usize {
    let count = || {
        journal
            .query(q)
            .unwrap()
            .iter()
            .filter(|r| r.event.kind() == "ProtocolError")
            .map(|r| {
                let v = serde_json::to_value(r).unwrap();
                1 + v["repeated"].as_u64().unwrap_or(0) as usize
            })
            .sum::<usize>()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while count() < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    count()
}

async fn gw_wait_count(
    gw: &chargegate::daemon::Running,
    charger: &str,
    kind: &str,
    n: usize,
) -> usize {
    let q = chargegate::journal::Query {
        charger: Some(charger.into()),
        ..Default::default()
    };
    let count = || {
        gw.journal
            .query(&q)
            .unwrap()
            .iter()
            .filter(|r| r.event.kind() == kind)
            .count()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while count() < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    count()
}

/// Another site's page in a browser on the gateway cannot press buttons
/// through the local API, even with no token configured.
#[tokio::test]
async fn cross_site_requests_to_the_api_are_refused() {
    let gw = Gateway::start(None, "").await;
    let api = gw.running.as_ref().unwrap().api_addr;
    let post = |extra: String, body: &'static str| async move {
        raw_post(api, "/api/v1/chargers/CP-X/actions/reboot", &extra, body)
            .await
            .0
    };
    // A form or a no-cors fetch: no JSON content type.
    assert_eq!(post("Content-Type: text/plain\r\n".into(), "{}").await, 415);
    assert_eq!(post(String::new(), "").await, 415);
    // JSON from another origin (only possible after a preflight, but still).
    assert_eq!(
        post(
            "Content-Type: application/json\r\nOrigin: http://evil.example\r\n".into(),
            "{}"
        )
        .await,
        403
    );
    // The CLI and the gateway's own page get through to the action (an
    // unknown charger here: 404).
    assert_eq!(
        post("Content-Type: application/json\r\n".into(), "{}").await,
        404
    );
    let same = format!("Content-Type: application/json\r\nOrigin: http://{api}\r\n");
    assert_eq!(post(same, "{}").await, 404);
}

#[tokio::test]
async fn a_cloud_flooding_a_slow_charger_gets_busy_answers_not_a_growing_queue() {
    let mut csms = Csms::start(default_answers()).await;
    let gw = Gateway::start(Some(&csms.url()), "").await;
    let mut slow = Charger::connect(&gw.url("CP-SLOW")).await; // never answers
    csms.next_connect().await;
    for i in 0..200 {
        csms.send(
            "CP-SLOW",
            &json!([2, format!("c{i}"), "Reset", {"type": "Soft"}]).to_string(),
        );
    }
    let mut busy = std::collections::BTreeSet::new();
    while busy.len() < 136 {
        let v: Value = serde_json::from_str(&csms.next_frame("CP-SLOW").await).unwrap();
        if v[0] == 4 && v[3].as_str().is_some_and(|d| d.contains("charger busy")) {
            busy.insert(v[1].as_str().unwrap()[1..].parse::<usize>().unwrap());
        }
    }
    assert_eq!(
        busy,
        (64..200).collect(),
        "the first 64 relayed, the rest refused"
    );
    for i in 0..64 {
        let v: Value = serde_json::from_str(&slow.recv().await).unwrap();
        assert_eq!(v[1], format!("c{i}"));
    }
}

/// Hashed passwords in the real daemon (its own runtime, not the test's):
/// the PBKDF2 check runs beside the relay, and a wrong password is still
/// refused while a right one, and other chargers' traffic, go through.
#[tokio::test]
async fn hashed_passwords_are_checked_by_the_real_daemon_while_others_relay() {
    let dir = tempfile::tempdir().unwrap();
    let hash = chargegate::password::hash("correct-horse-42").unwrap();
    let extra = format!("[[charger]]\nid = \"CP-H\"\npassword = \"{hash}\"\n");
    let cfg = write_config(
        dir.path(),
        &config_text(&dir.path().join("data"), None, &extra),
    );
    let p = Process::spawn(&cfg).await;
    let url = |id: &str| format!("ws://{}/ocpp/{id}", p.ocpp);
    let mut other = Charger::connect(&url("CP-FREE")).await;
    let right = chargegate::upstream::basic_auth("CP-H", "correct-horse-42");
    let wrong = chargegate::upstream::basic_auth("CP-H", "correct-horse-43");
    // Several handshakes at once, each a full PBKDF2 check, while another
    // charger keeps talking.
    let tries: Vec<_> = (0..6)
        .map(|i| {
            let (u, a) = (
                url("CP-H"),
                if i % 2 == 0 {
                    right.clone()
                } else {
                    wrong.clone()
                },
            );
            tokio::spawn(async move { connect_status(&u, Some("ocpp1.6"), Some(&a)).await.err() })
        })
        .collect();
    for _ in 0..20 {
        assert_eq!(other.call("Heartbeat", serde_json::json!({})).await[0], 3);
    }
    let mut refused = 0;
    for t in tries {
        if let Some(code) = t.await.unwrap() {
            assert_eq!(code, 401);
            refused += 1;
        }
    }
    assert_eq!(refused, 3, "the three wrong passwords, and only they");
    let mut cp = connect_status(&url("CP-H"), Some("ocpp1.6"), Some(&right))
        .await
        .unwrap_or_else(|c| panic!("right password refused with {c}"));
    assert_eq!(cp.call("Heartbeat", serde_json::json!({})).await[0], 3);
    p.kill9().await;
}

/// Issue 16: ids that name directories or hide invisible characters are
/// refused at the handshake, by the real daemon.
#[tokio::test]
async fn directory_names_and_invisible_characters_are_not_charger_ids() {
    let gw = Gateway::start(None, "").await;
    for id in [
        "%2E",
        "%2E%2E",
        "..",
        "CP%E2%80%8B1",
        "CP%E2%80%AE1",
        "a%5Cb",
    ] {
        let url = gw.url(id);
        let got = connect_status(&url, Some("ocpp1.6"), None).await;
        assert!(
            matches!(got, Err(400..=404)),
            "{id}: {:?}",
            got.as_ref().map(|_| "connected")
        );
    }
    // A plain id still connects.
    let ok = connect_status(&gw.url("CP-OK"), Some("ocpp1.6"), None).await;
    assert!(ok.is_ok());
}

/// Issue 16: binary frames count against the message rate like text ones,
/// and a charger that keeps sending them is closed.
#[tokio::test]
async fn binary_frames_are_rate_limited_like_text() {
    let (gw, _dir) = limited("rate_limit_per_sec = 50\nrate_limit_burst = 50\n").await;
    let mut flood = Charger::connect(&format!("ws://{}/ocpp/CP-BIN", gw.ocpp_addr)).await;
    let mut sent = 0;
    for _ in 0..3000 {
        if flood
            .ws
            .send(tokio_tungstenite::tungstenite::Message::Binary(
                vec![0xff, 0xfe].into(),
            ))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    let closed = loop {
        match tokio::time::timeout(WAIT, flood.ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f)))) => {
                break f.map(|f| u16::from(f.code));
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("the binary flood was not closed ({sent} sent): {other:?}"),
        }
    };
    assert_eq!(closed, Some(1008), "policy violation");
    let journaled = gw
        .journal
        .query(&chargegate::journal::Query {
            charger: Some("CP-BIN".into()),
            kinds: vec!["ProtocolError".into()],
            ..Default::default()
        })
        .unwrap()
        .len();
    assert!(
        journaled <= 52,
        "the burst's worth journaled, not every frame: {journaled}"
    );
    gw.stop().await;
}

/// DNS rebinding and forged sources: the loopback API answers only to its
/// own names, and the journal's source is what the gateway saw, not what a
/// client claimed.
#[tokio::test]
async fn the_api_answers_only_its_own_names_and_sources_are_not_taken_on_trust() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(None, "").await;
    let mut cp = Charger::connect(&gw.url("CP-HOST")).await;
    cp.call("BootNotification", boot()).await;
    let api = gw.running.as_ref().unwrap().api_addr;
    let raw = |host: &str, headers: &str| {
        let req = format!(
            "POST /api/v1/chargers/CP-HOST/actions/pause HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{headers}Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        async move {
            let mut s = tokio::net::TcpStream::connect(api).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out.split(' ')
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(0)
        }
    };
    // A page on the attacker's name, resolved to the gateway: refused,
    // even with a matching Origin.
    let evil = "rebind.attacker.example:8180";
    assert_eq!(raw(evil, &format!("Origin: http://{evil}\r\n")).await, 421);
    assert_eq!(raw(evil, "").await, 421);
    assert!(
        gw.journal().state().chargers["CP-HOST"].override_.is_none(),
        "not paused"
    );
    // Its own names pass.
    assert_eq!(raw(&api.to_string(), "").await, 200);
    assert_eq!(raw(&format!("localhost:{}", api.port()), "").await, 200);
    // A claimed source is not believed: a request that says it is MQTT is
    // journaled as the API; a browser on another origin is not the web page.
    raw(&api.to_string(), "x-chargegate-source: mqtt\r\n").await;
    raw(
        &api.to_string(),
        "x-chargegate-source: cli\r\nOrigin: http://elsewhere.example\r\n",
    )
    .await;
    let sources: Vec<String> = gw
        .events("CP-HOST")
        .iter()
        .filter_map(|r| match &r.event {
            chargegate::event::Event::Override { source, .. } => Some(source.to_string()),
            _ => None,
        })
        .collect();
    assert!(
        !sources.iter().any(|s| s == "mqtt" || s == "web"),
        "{sources:?}"
    );
    assert!(
        sources.iter().filter(|s| *s == "api").count() >= 3,
        "{sources:?}"
    );
    // The CLI from this machine is still the CLI.
    let r: chargegate::api::ActionResult = chargegate::client::ApiClient {
        addr: api,
        token: None,
    }
    .post(
        "/api/v1/chargers/CP-HOST/actions/resume",
        &serde_json::json!({}),
    )
    .await
    .unwrap();
    assert_eq!(r.outcome, "result");
    gw.wait_event("CP-HOST", "Override", |e| {
        e["mode"] == "resume" && e["source"] == "cli"
    })
    .await;
}

/// Issue 16, item 3: guessing passwords costs the guesser, not the site:
/// after a small budget of failures an address is refused before any
/// password is checked (429), and the attempts are journaled once a
/// minute, not each.
#[tokio::test]
async fn a_password_guesser_is_throttled_and_not_journaled_per_attempt() {
    let hash = chargegate::password::hash("correct-horse-42").unwrap();
    let gw = Gateway::start(
        None,
        &format!("[[charger]]\nid = \"CP-G\"\npassword = \"{hash}\"\n"),
    )
    .await;
    let mut other = Charger::connect(&gw.url("CP-OTHER")).await;
    let mut codes = Vec::new();
    for i in 0..40 {
        let wrong = chargegate::upstream::basic_auth("CP-G", &format!("guess-number-{i:04}"));
        codes.push(
            connect_status(&gw.url("CP-G"), Some("ocpp1.6"), Some(&wrong))
                .await
                .err(),
        );
    }
    let budget = chargegate::limits::LOGIN_BUDGET as usize;
    assert!(codes[..budget].iter().all(|c| *c == Some(401)), "{codes:?}");
    assert!(codes[budget..].iter().all(|c| *c == Some(429)), "{codes:?}");
    // The other charger never noticed.
    let t = std::time::Instant::now();
    assert_eq!(other.call("Heartbeat", json!({})).await[0], 3);
    assert!(t.elapsed() < std::time::Duration::from_secs(1));
    let refused = gw
        .journal()
        .query(&Default::default())
        .unwrap()
        .iter()
        .filter(|r| r.event.kind() == "Refused")
        .count();
    assert!(refused <= 4, "40 attempts, {refused} journal records");
}

/// Issue 16, item 2: the diagnostics upload listener checks the token
/// before it reads a body, and caps connections per address, so idle or
/// bogus uploads cannot hold memory or file descriptors.
#[tokio::test]
async fn the_upload_listener_checks_the_token_first_and_caps_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upload = free_addr();
    let gw = Gateway::start(None, &format!("[diagnostics]\nlisten = \"{upload}\"\n")).await;
    // A made-up token announcing 100 MB: refused at once, body unread.
    let mut s = tokio::net::TcpStream::connect(upload).await.unwrap();
    s.write_all(b"PUT /diagnostics/made-up-token/x.log HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 403");
    // Idle connections from one address: a few are let in, the rest closed.
    let mut idle = Vec::new();
    for _ in 0..12 {
        idle.push(tokio::net::TcpStream::connect(upload).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut closed = 0;
    for s in &mut idle {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(std::time::Duration::from_millis(100), s.read(&mut b)).await
        {
            closed += 1;
        }
    }
    assert!(closed >= 8, "{closed} of 12 idle connections closed");
    // The OCPP side is untouched.
    let mut cp = Charger::connect(&gw.url("CP-UP")).await;
    assert_eq!(cp.call("Heartbeat", json!({})).await[0], 3);
}

/// What the gateway answers itself is checked against the official OCPP
/// 1.6 schemas and refused with the OCPP-J code for what is wrong; what it
/// relays is the cloud's to judge, byte for byte.
#[tokio::test]
async fn payloads_the_gateway_answers_itself_are_checked_against_the_schemas() {
    let gw = Gateway::start(None, "").await;
    let mut cp = Charger::connect(&gw.url("CP-SCHEMA")).await;
    let cases = [
        ("Heartbeat", json!({"extra": true}), "FormationViolation"),
        (
            "DataTransfer",
            json!({"vendorId": 42}),
            "TypeConstraintViolation",
        ),
        (
            "DataTransfer",
            json!({"vendorId": "v", "data": []}),
            "TypeConstraintViolation",
        ),
        (
            "Authorize",
            json!({"idTag": "x".repeat(25)}),
            "PropertyConstraintViolation",
        ),
        (
            "BootNotification",
            json!({"chargePointVendor": "V"}),
            "OccurenceConstraintViolation",
        ),
    ];
    for (action, payload, want) in cases {
        let a = cp.call(action, payload.clone()).await;
        assert_eq!(
            (a[0].as_i64(), a[2].as_str()),
            (Some(4), Some(want)),
            "{action} {payload}: {a}"
        );
    }
    assert_eq!(
        cp.call("Authorize", json!({"idTag": "x".repeat(20)})).await[0],
        3
    );

    // Relayed: the cloud gets the frame as the charger sent it.
    let mut csms = Csms::start(default_answers()).await;
    let gw = Gateway::start(Some(&csms.url()), "").await;
    let mut cp = Charger::connect(&gw.url("CP-RELAY")).await;
    csms.next_connect().await;
    let text = r#"[2,"h1","Heartbeat",{"extra":true}]"#;
    cp.send(text).await;
    let f = csms.next_frame("CP-RELAY").await;
    assert_eq!(f, text, "relayed byte for byte");
}
