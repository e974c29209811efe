//! Refusals at the handshake and malformed frames.

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

    // Refusals of a known charger are in its log; unknown ids do not get a charger entry.
    let q = chargegate::journal::Query {
        kinds: vec!["Refused".into()],
        ..Default::default()
    };
    let mut refused = Vec::new();
    for _ in 0..50 {
        refused = strict.journal.query(&q).unwrap();
        if refused.len() >= 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(refused.len() >= 5, "{refused:?}");
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
    let errors = gw.wait_count("CP-BAD", "ProtocolError", cases.len()).await;
    assert_eq!(
        errors,
        cases.len(),
        "one ProtocolError journaled per bad frame"
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
