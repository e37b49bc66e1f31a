//! A 10 s broker outage mid-stream: nothing is lost. Its own test binary, because pausing
//! the shared broker would stall every other test running beside it.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn broker_outage_of_ten_seconds_loses_nothing() {
    let pid = std::env::var("UWE_TANSU_PID").expect(
        "UWE_TANSU_PID: run through scripts/test, which starts the broker and exports its pid",
    );
    let t = topics("out", 2);
    let events: Vec<(String, Vec<u8>)> = json_events(vacancy_events(120, 400));
    produce(&t.input, 2, &events);
    let mut c =
        Connector::start(&t.pipeline("outage", "vacancy", "json", "at-least-once", &free_addr()));
    let first = consume_until(&t.output, Duration::from_secs(240), |g| g.len() >= 10);
    assert!(first.len() >= 10, "log:\n{}", c.log());
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_secs(10));
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    let all = consume_until(&t.output, Duration::from_secs(300), |g| {
        g.iter()
            .map(|r| r.json()["source"]["id"].as_str().unwrap().to_string())
            .collect::<HashSet<_>>()
            .len()
            >= 120
    });
    let ids: HashSet<String> = all
        .iter()
        .map(|r| r.json()["source"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 120, "log:\n{}", c.log());
    let dl = consume_until(&t.dlq, Duration::from_secs(3), |g| !g.is_empty());
    assert!(
        dl.is_empty(),
        "transient errors are retried, never dead-lettered"
    );
    assert!(c.terminate().success(), "log:\n{}", c.log());
    assert_eq!(committed(&t.group, &t.input, 2), vec![60, 60]);
    // The outage outlasts the session (3 s in tests): the partitions are lost, not revoked,
    // and are forgotten without a commit that could only wait for the broker.
    assert!(c.log().contains("assignment lost"), "log:\n{}", c.log());
}
