//! `GET /findings` of a real `credwatch run` on a real local Kinesis (moto): what `run` wrote,
//! newest first, in both views, the filters, the findings read back after a restart, and the
//! bearer token (missing, wrong, right) over loopback.
//!
//! Each test starts its own moto server and `credwatch run` child (killed on drop), on free
//! 127.0.0.1 ports. Waits are bounded; a timeout panics with what was awaited and the log.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use support::moto::MotoServer;
use support::process::free_port;
use support::run::{
    sessions, Nets, Run, Session, State, ACCT, FINDINGS_TIMEOUT, LOG_GROUP, REGION, RULE,
};

/// Where this file's sessions come from (EC2's ranges: `session_token_reuse` alone).
const NETS: Nets = Nets {
    home: "54.161",
    evil: "54.211.9",
};
const STREAM: &str = "cloudtrail";
/// The event rule each session also trips (medium, where `session_token_reuse` is high).
const CREATE_USER: &str = "create_user";
const TOKEN: &str = "findings-test-token-6c1f0d2b9a";

/// The session's credential creating an IAM user from its home, after its theft.
fn create_user(s: &Session) -> String {
    let mut e: Value = serde_json::from_str(&s.event(
        &format!("{}-create-user", s.home_id),
        &s.home_ip,
        s.t + 120,
    ))
    .expect("event JSON");
    e["eventName"] = json!("CreateUser");
    e["eventSource"] = json!("iam.amazonaws.com");
    e["requestParameters"] = json!({"userName": format!("backdoor-{}", s.instance)});
    e.to_string()
}

/// Each session's home call, its second origin and its CreateUser, by PutLogEvents.
async fn put(moto: &MotoServer, sessions: &[Session]) {
    for (n, s) in sessions.iter().enumerate() {
        for (i, message) in [s.home(), s.second(), create_user(s)]
            .into_iter()
            .enumerate()
        {
            moto.put_log_events(
                LOG_GROUP,
                &format!("{ACCT}_CloudTrail_{REGION}_{}_{n}_{i}", s.home_id),
                &[(support::run::now_ms(), message)],
            )
            .await;
        }
    }
}

async fn stream(moto: &MotoServer) {
    moto.create_stream(STREAM, 2).await;
    moto.create_log_group_with_subscription(LOG_GROUP, STREAM)
        .await;
}

/// Waits until the findings file holds `n` findings and `GET /findings` lists as many (the
/// ring is filled just after the file is flushed); returns them in file order.
async fn await_findings(
    run: &mut Run,
    state: &State,
    n: usize,
    api: &Client,
    token: Option<&str>,
) -> Vec<Value> {
    let written = run
        .wait_for(
            &format!("{n} findings in the file"),
            FINDINGS_TIMEOUT,
            || {
                let f = state.findings();
                if f.len() >= n {
                    Ok(f)
                } else {
                    Err(format!("{} findings: {f:?}", f.len()))
                }
            },
        )
        .await;
    let deadline = std::time::Instant::now() + FINDINGS_TIMEOUT;
    loop {
        let listed = api.findings("limit=1000", token).await["count"]
            .as_u64()
            .unwrap_or(0) as usize;
        if listed >= written.len() {
            return written;
        }
        run.assert_running("GET /findings to list what was written");
        assert!(
            std::time::Instant::now() < deadline,
            "GET /findings lists {listed} of {} findings written\n{}",
            written.len(),
            run.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    fn new(port: u16) -> Client {
        Client {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
        }
    }

    async fn get(&self, path_and_query: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path_and_query}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"))
    }

    /// `GET /findings?query` answered 200: the answer.
    async fn findings(&self, query: &str, token: Option<&str>) -> Value {
        let resp = self.get(&format!("/findings?{query}"), token).await;
        let status = resp.status().as_u16();
        assert_eq!(
            resp.headers()["cache-control"],
            "no-store",
            "GET /findings?{query}"
        );
        let body = resp.text().await.expect("body");
        assert_eq!(status, 200, "GET /findings?{query}: {body}");
        let v: Value = serde_json::from_str(&body).expect("the answer is JSON");
        assert_eq!(
            v["count"].as_u64().unwrap() as usize,
            v["items"].as_array().unwrap().len(),
            "{v}"
        );
        v
    }

    /// The ids `GET /findings?query` lists, in order.
    async fn ids(&self, query: &str, token: Option<&str>) -> Vec<String> {
        ids(&self.findings(query, token).await["items"])
    }
}

fn ids(items: &Value) -> Vec<String> {
    items
        .as_array()
        .expect("items")
        .iter()
        .map(|f| f["id"].as_str().expect("id").to_string())
        .collect()
}

/// The ids of `findings` (file order) newest first, optionally of one rule.
fn newest_first(findings: &[Value], rule: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = findings
        .iter()
        .filter(|f| rule.is_none_or(|r| f["rule"] == r))
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect();
    v.reverse();
    v
}

#[tokio::test]
async fn findings_lists_what_run_wrote_newest_first_and_filters_by_rule_severity_time_and_limit() {
    let moto = MotoServer::start();
    stream(&moto).await;
    let first = sessions("find-a", 3, NETS);
    put(&moto, &first).await;

    let state = State::new();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut run = Run::start(&moto.endpoint(), STREAM, &state, Some(&addr), &[]);
    let api = Client::new(port);
    let written = await_findings(&mut run, &state, 2 * first.len(), &api, None).await;

    // Everything, newest first; the full view is each finding exactly as written.
    let all = api.findings("limit=1000", None).await;
    assert_eq!(ids(&all["items"]), newest_first(&written, None));
    assert_eq!(all["truncated"], false);
    let mut file_order: Vec<Value> = all["items"].as_array().unwrap().clone();
    file_order.reverse();
    assert_eq!(file_order, written, "the full view is the findings file");
    let rules: BTreeSet<&str> = written.iter().filter_map(|f| f["rule"].as_str()).collect();
    assert_eq!(rules, BTreeSet::from([RULE, CREATE_USER]), "{written:?}");

    // By rule (repeated or comma-separated), by minimum severity, by count.
    assert_eq!(
        api.ids(&format!("rule={CREATE_USER}"), None).await,
        newest_first(&written, Some(CREATE_USER))
    );
    assert_eq!(
        api.ids(&format!("rule={RULE}"), None).await,
        newest_first(&written, Some(RULE))
    );
    assert_eq!(
        api.ids(&format!("rule={RULE},{CREATE_USER}"), None).await,
        newest_first(&written, None)
    );
    assert_eq!(
        api.ids(&format!("rule={RULE}&rule={CREATE_USER}"), None)
            .await,
        newest_first(&written, None)
    );
    assert_eq!(
        api.ids("severity=high", None).await,
        newest_first(&written, Some(RULE)),
        "session_token_reuse is high, create_user medium"
    );
    assert_eq!(
        api.ids("severity=medium", None).await,
        newest_first(&written, None)
    );
    assert!(api.ids("severity=critical", None).await.is_empty());
    let two = api.findings("limit=2", None).await;
    assert_eq!(ids(&two["items"]), newest_first(&written, None)[..2]);
    assert_eq!(two["truncated"], true);

    // The table view: flat columns, both origins with their places.
    let table = api.findings(&format!("view=table&rule={RULE}"), None).await;
    for row in table["items"].as_array().unwrap() {
        let s = first
            .iter()
            .find(|s| row["session"] == s.name().as_str())
            .unwrap_or_else(|| panic!("a row for an unknown session: {row}"));
        assert_eq!(row["rule"], RULE, "{row}");
        assert_eq!(row["severity"], "high", "{row}");
        assert_eq!(row["account_id"], ACCT, "{row}");
        assert_eq!(row["access_key_id"], s.key.as_str(), "{row}");
        assert_eq!(row["first_origin"], s.home_ip.as_str(), "{row}");
        assert_eq!(row["second_origin"], s.evil_ip.as_str(), "{row}");
        assert_eq!(row["first_place"], "aws", "{row}");
        assert_eq!(row["second_place"], "aws", "{row}");
        assert!(
            row["first_place_detail"]
                .as_str()
                .is_some_and(|d| d.contains("EC2")),
            "{row}"
        );
        let f = written.iter().find(|f| f["id"] == row["id"]).unwrap();
        assert_eq!(row["detected_at"], f["detected_at"], "{row}");
        assert_eq!(row["title"], f["title"], "{row}");
    }
    let cu = api
        .findings(&format!("view=table&rule={CREATE_USER}"), None)
        .await;
    for row in cu["items"].as_array().unwrap() {
        assert!(row["first_origin"].is_string(), "the trigger: {row}");
        assert!(row["second_origin"].is_null(), "{row}");
    }

    // `since` is on detected_at: only what was found after it.
    let mid = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let second = sessions("find-b", 2, NETS);
    put(&moto, &second).await;
    let written = await_findings(
        &mut run,
        &state,
        2 * (first.len() + second.len()),
        &api,
        None,
    )
    .await;
    let later: Vec<Value> = written[2 * first.len()..].to_vec();
    assert_eq!(
        api.ids(&format!("since={mid}"), None).await,
        newest_first(&later, None)
    );
    assert_eq!(
        api.ids("limit=1000", None).await,
        newest_first(&written, None)
    );

    // A query that cannot be read: 400, naming the parameter.
    for (q, names) in [
        ("severity=urgent", "severity"),
        ("since=yesterday", "since"),
        ("rule=no_such_rule", "rule"),
        ("limit=0", "limit"),
        ("view=wide", "view"),
    ] {
        let resp = api.get(&format!("/findings?{q}"), None).await;
        assert_eq!(resp.status().as_u16(), 400, "{q}");
        let body: Value = resp.json().await.expect("JSON error");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.starts_with(&format!("{names}:"))),
            "{q}: {body}"
        );
    }
    assert!(
        run.log_tail().contains("GET /findings is open"),
        "{}",
        run.log_tail()
    );

    // After a restart, the recent findings are read back from the findings file.
    run.sigterm();
    let status = run.wait_exit(Duration::from_secs(30)).expect("run exits");
    assert!(status.success(), "{status}\n{}", run.log_tail());
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut run = Run::start(&moto.endpoint(), STREAM, &state, Some(&addr), &[]);
    let api = Client::new(port);
    run.wait_for("GET /livez", FINDINGS_TIMEOUT, || {
        support::run::http_get(port, "/livez")
            .filter(|(s, _)| *s == 200)
            .ok_or_else(|| "no answer".to_string())
    })
    .await;
    assert_eq!(
        api.ids("limit=1000", None).await,
        newest_first(&state.findings(), None)
    );
    assert_eq!(state.findings().len(), written.len(), "no finding repeated");
}

#[tokio::test]
async fn findings_requires_the_configured_bearer_token_and_a_refusal_tells_nothing() {
    let moto = MotoServer::start();
    stream(&moto).await;
    let sessions = sessions("find-t", 2, NETS);
    put(&moto, &sessions).await;

    let state = State::new();
    let token_file = state.dir.path().join("findings-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write the token");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let token_path = token_file.to_string_lossy().to_string();
    let mut run = Run::start(
        &moto.endpoint(),
        STREAM,
        &state,
        Some(&addr),
        &[("CREDWATCH_METRICS__FINDINGS_TOKEN_FILE", &token_path)],
    );
    let api = Client::new(port);
    let written = await_findings(&mut run, &state, 2 * sessions.len(), &api, Some(TOKEN)).await;

    // What must not show in a refusal: keys, addresses, accounts, sessions, finding ids.
    let mut secrets: Vec<String> = vec![ACCT.to_string()];
    for s in &sessions {
        secrets.extend([
            s.key.clone(),
            s.home_ip.clone(),
            s.evil_ip.clone(),
            s.name(),
        ]);
    }
    secrets.extend(
        written
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_string()),
    );

    let wrong = format!("{TOKEN}x");
    let refusals: [(&str, Option<&str>); 4] = [
        ("", None),
        ("?view=table&limit=5", None),
        ("?severity=urgent", None),
        ("", Some(wrong.as_str())),
    ];
    for (query, token) in refusals {
        let resp = api.get(&format!("/findings{query}"), token).await;
        let what = format!("GET /findings{query} with token {token:?}");
        assert_eq!(resp.status().as_u16(), 401, "{what}");
        let headers = resp.headers().clone();
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
            "{what}: {headers:?}"
        );
        let body = resp.bytes().await.expect("body");
        assert!(body.is_empty(), "{what}: body {body:?}");
        for (name, value) in &headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            for s in &secrets {
                assert!(
                    !value.contains(s.as_str()),
                    "{what}: header {name}: {value}"
                );
            }
        }
    }
    // Another scheme with the right secret is not a bearer token.
    let basic = api
        .http
        .get(format!("{}/findings", api.base))
        .header("authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .expect("GET /findings");
    assert_eq!(basic.status().as_u16(), 401);

    // The right token.
    assert_eq!(
        api.ids("limit=1000", Some(TOKEN)).await,
        newest_first(&written, None)
    );
    // The rest of the server stays open.
    for path in ["/metrics", "/livez", "/readyz"] {
        assert_eq!(api.get(path, None).await.status().as_u16(), 200, "{path}");
    }
    assert!(
        run.log_tail()
            .contains("GET /findings requires the bearer token of metrics.findings_token_file"),
        "{}",
        run.log_tail()
    );
    assert!(!run.log_tail().contains(TOKEN), "the token is never logged");
}

#[tokio::test]
async fn a_token_that_cannot_be_read_stops_run_at_start_naming_the_option() {
    let state = State::new();
    let addr = format!("127.0.0.1:{}", free_port());
    // Nothing listens on port 9: the start must fail before any Kinesis call.
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[("CREDWATCH_METRICS__FINDINGS_TOKEN_ENV", "FINDINGS_TOKEN_NOT_SET_4242")],
            "metrics.findings_token_env: environment variable FINDINGS_TOKEN_NOT_SET_4242 is not set",
        ),
        (
            &[
                ("CREDWATCH_METRICS__FINDINGS_TOKEN_ENV", "FINDINGS_TOKEN_SHORT"),
                ("FINDINGS_TOKEN_SHORT", "abc"),
            ],
            "metrics.findings_token_env: the token is 3 characters",
        ),
        (
            &[("CREDWATCH_METRICS__FINDINGS_TOKEN_FILE", "/nonexistent/credwatch-token")],
            "metrics.findings_token_file: reading /nonexistent/credwatch-token",
        ),
    ];
    for (env, want) in cases {
        let mut run = Run::start("http://127.0.0.1:9", STREAM, &state, Some(&addr), env);
        let status = run
            .wait_exit(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("run did not stop ({want})\n{}", run.log_tail()));
        assert_eq!(status.code(), Some(2), "{want}\n{}", run.log_tail());
        assert!(run.log_tail().contains(want), "{want}\n{}", run.log_tail());
    }
}
