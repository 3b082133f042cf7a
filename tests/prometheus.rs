//! Observability against the real thing: `promtool` on a live `/metrics`, on the alert rules and
//! on the scrape config; a real Prometheus scraping a running `credwatch run` (on a moto
//! emulator) that evaluates every expression of both Grafana dashboards and of the alert rules;
//! and the structure of the dashboards, the Docker Compose file and the Dockerfile.
//!
//! Each test that needs them starts its own moto server, `credwatch run` child and Prometheus,
//! on free 127.0.0.1 ports, killed on drop. Waits are bounded; a timeout panics with what was
//! awaited, what was seen and the logs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::moto::MotoServer;
use support::prometheus::{
    dashboard_exprs, describe, free_port, has_data, http, promtool, substitute_grafana_variables,
    PrometheusServer,
};
use support::run::{gzip, log_tail, now_secs, test_env, Nets, Session, LOG_GROUP, REGION, RULE};

const STREAM: &str = "cloudtrail";
/// Garbage records put on the stream: each is one bad record.
const GARBAGE_RECORDS: usize = 3;
const WAIT: Duration = Duration::from_secs(60);

/// Alert conditions that are false on a healthy system, so their expression legitimately
/// returns nothing here: for these (and only these) the test evaluates the selector or
/// aggregation under the condition instead, which must appear verbatim in the alert's
/// expression and must return data. The full expression must still evaluate without error.
/// `CredwatchBadRecordRate` is not here: the scenario's garbage records make it fire.
const QUIET_ALERTS: &[(&str, &str)] = &[
    // Up: up == 1.
    ("CredwatchDown", r#"up{job="credwatch"}"#),
    // Shards are owned.
    ("CredwatchNoShardsOwned", "credwatch_kinesis_shards_owned"),
    // Lag is seconds, not minutes.
    (
        "CredwatchKinesisLagHigh",
        "max by (instance, shard) (credwatch_kinesis_behind_latest_seconds)",
    ),
    // Nothing answers the test's webhook: deliveries are retried, never rejected.
    (
        "CredwatchEscalationFailures",
        r#"credwatch_escalations_total{outcome=~"rejected|dead_lettered"}"#,
    ),
    // Events are flowing.
    (
        "CredwatchNoEvents",
        "sum by (instance) (increase(credwatch_events_total[15m]))",
    ),
    // The outputs are writable.
    (
        "CredwatchOutputBlocked",
        "max by (instance, output) (credwatch_output_blocked)",
    ),
    // Checkpoints are written every second.
    (
        "CredwatchCheckpointStale",
        "credwatch_checkpoint_age_seconds",
    ),
    // One process, embedded backend: no lease changes hands, DynamoDB is not used.
    (
        "CredwatchLeaseChurn",
        r#"credwatch_lease_events_total{event="lost"}"#,
    ),
    ("CredwatchDynamoDBErrors", "credwatch_dynamodb_errors_total"),
    // The built-in ranges (createDate 2026-08-22) may be past max_age_days on the day the test
    // runs, or not: the quiet selector is the gauge itself.
    ("CredwatchIpRangesStale", "credwatch_ip_ranges_stale"),
    // moto's default account is read without errors.
    (
        "CredwatchInventoryReadFailing",
        "credwatch_inventory_read_failing",
    ),
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

// ---- the scenario --------------------------------------------------------------------------

/// A `credwatch run` child, killed on drop.
struct Run {
    child: Child,
    log: PathBuf,
    findings: PathBuf,
    metrics_port: u16,
}

impl Run {
    fn start(endpoint: &str, dir: &Path) -> Run {
        let metrics_port = free_port();
        // One escalation destination, so that the escalation series exist. Nothing listens on
        // 127.0.0.1:9: deliveries are retried there, and findings wait in the spool.
        let secret = dir.join("webhook-secret");
        std::fs::write(&secret, "credwatch-test-signing-secret\n").expect("write the secret");
        let config = dir.join("credwatch.toml");
        std::fs::write(
            &config,
            format!(
                "[[escalation]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/credwatch\"\n\
                 secret_file = {:?}\n\n\
                 # The inventory of moto's default account, so that its series exist.\n\
                 [inventory]\nregions = [\"{REGION}\"]\nendpoint_url = \"{endpoint}\"\n",
                secret.to_string_lossy()
            ),
        )
        .expect("write credwatch.toml");
        let log = dir.join("credwatch-run.log");
        let findings = dir.join("findings.jsonl");
        let log_file = std::fs::File::create(&log).expect("create credwatch log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_credwatch"));
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--stream", STREAM])
            .args(["--region", REGION])
            .args(["--endpoint-url", endpoint])
            .arg("--findings-out")
            .arg(&findings)
            .arg("--dead-letter-out")
            .arg(dir.join("dead-letter.jsonl"))
            .arg("--checkpoint-dir")
            .arg(dir.join("checkpoints"))
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")]);
        test_env(&mut cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone credwatch log handle"))
            .stderr(log_file)
            .spawn()
            .expect("spawn credwatch run");
        Run {
            child,
            log,
            findings,
            metrics_port,
        }
    }

    fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    fn assert_running(&mut self, while_waiting_for: &str) {
        if let Some(status) = self.child.try_wait().expect("try_wait credwatch") {
            panic!(
                "credwatch run exited ({status}) while waiting for {while_waiting_for}\n\
                 --- credwatch log ---\n{}",
                self.log_tail()
            );
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.metrics_port);
        let resp = http().get(url).send().await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    }

    async fn metrics(&self) -> String {
        match self.get("/metrics").await {
            Some((200, body)) => body,
            other => panic!(
                "GET /metrics: {other:?}\n--- credwatch log ---\n{}",
                self.log_tail()
            ),
        }
    }

    /// Polls `check` every 200 ms until it gives `Ok`, for at most `timeout`.
    async fn wait_for<F, Fut, T>(&mut self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = match check().await {
                Ok(v) => return v,
                Err(seen) => seen,
            };
            self.assert_running(what);
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last seen: {seen}\n\
                     --- credwatch log ---\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of the samples of `name` (any labels) in a text exposition.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Everything a scenario keeps alive.
struct Scenario {
    run: Run,
    moto: MotoServer,
    _dir: tempfile::TempDir,
}

/// Garbage records: each is one bad record (not gzip, truncated gzip, not JSON).
fn garbage() -> Vec<(&'static str, Vec<u8>)> {
    let full = gzip(b"{\"messageType\":\"DATA_MESSAGE\"}");
    let garbage = vec![
        ("a", b"definitely not gzip".to_vec()),
        ("b", full[..full.len() / 2].to_vec()),
        ("c", gzip(b"{ this is not json")),
    ];
    assert_eq!(garbage.len(), GARBAGE_RECORDS);
    garbage
}

/// Puts session `n`'s stolen credential (its home call, then a call from elsewhere) with
/// PutLogEvents, and the garbage records straight on the stream.
async fn put_theft_and_garbage(moto: &MotoServer, n: u32) {
    let nets = Nets {
        home: "54.160",
        evil: "54.210.7",
    };
    let s = Session::new("prom", n as usize, nets);
    let now_ms = now_secs() * 1000;
    moto.put_log_events(LOG_GROUP, &format!("home-{n}"), &[(now_ms, s.home())])
        .await;
    moto.put_log_events(
        LOG_GROUP,
        &format!("elsewhere-{n}"),
        &[(now_ms, s.second())],
    )
    .await;
    moto.put_records(STREAM, &garbage()).await;
}

/// moto with a 2-shard stream fed by a log group's subscription filter; a stolen instance
/// credential and garbage records put on it (see [`put_theft_and_garbage`]); `credwatch run`
/// consuming it until the finding is written and every bad record counted.
async fn scenario() -> Scenario {
    let moto = MotoServer::start();
    moto.create_stream(STREAM, 2).await;
    moto.create_log_group_with_subscription(LOG_GROUP, STREAM)
        .await;
    put_theft_and_garbage(&moto, 0).await;

    let dir = tempfile::tempdir().expect("temp dir for credwatch run");
    let mut run = Run::start(&moto.endpoint(), dir.path());
    let port = run.metrics_port;
    run.wait_for("GET /readyz to answer 200", WAIT, || async move {
        let url = format!("http://127.0.0.1:{port}/readyz");
        match http().get(url).send().await {
            Ok(r) if r.status().as_u16() == 200 => Ok(()),
            Ok(r) => Err(format!("{}", r.status())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let findings = run.findings.clone();
    run.wait_for(&format!("a {RULE} finding"), WAIT, || {
        let findings = findings.clone();
        async move {
            let text = std::fs::read_to_string(&findings).unwrap_or_default();
            if text.lines().any(|l| l.contains(RULE)) {
                Ok(())
            } else {
                Err(format!("findings file: {text:?}"))
            }
        }
    })
    .await;
    run.wait_for(
        "every bad record and the finding counted",
        WAIT,
        || async move {
            let url = format!("http://127.0.0.1:{port}/metrics");
            let text = match http().get(url).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(e) => return Err(e.to_string()),
            };
            let bad = metric_sum(&text, "credwatch_bad_records_total");
            // The finding is counted just after it is written to the file (and spooled).
            let found = metric_sum(&text, "credwatch_findings_total");
            if bad >= GARBAGE_RECORDS as f64 && found >= 1.0 {
                Ok(())
            } else {
                Err(format!(
                "credwatch_bad_records_total sums to {bad}, credwatch_findings_total to {found}"
            ))
            }
        },
    )
    .await;
    Scenario {
        run,
        moto,
        _dir: dir,
    }
}

// ---- promtool ------------------------------------------------------------------------------

#[tokio::test]
async fn promtool_check_metrics_accepts_the_metrics_of_a_running_credwatch() {
    let mut s = scenario().await;
    let text = s.run.metrics().await;
    let out = promtool(&["check", "metrics"], Some(&text));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n--- /metrics ---\n{text}",
        describe(&out)
    );
    // What the scenario produced is there.
    assert!(
        text.contains(&format!(
            "credwatch_findings_total{{rule=\"{RULE}\",severity=\"high\"}} 1"
        )),
        "{text}"
    );
    for kind in ["not_gzip", "truncated_gzip", "not_json"] {
        assert!(
            text.contains(&format!("credwatch_bad_records_total{{kind=\"{kind}\"}} 1")),
            "{kind}: {text}"
        );
    }
    assert!(
        text.contains("credwatch_detection_latency_seconds_count 1"),
        "{text}"
    );
    s.run.assert_running("the end of the test");
}

#[test]
fn promtool_check_rules_and_config_accept_the_committed_files() {
    let rules = repo().join("dashboards/prometheus/alerts.yml");
    let out = promtool(&["check", "rules", &rules.to_string_lossy()], None);
    assert!(
        out.status.success(),
        "promtool check rules: {}",
        describe(&out)
    );
    let n = alert_rules().len();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("SUCCESS: {n} rules found")),
        "{}",
        describe(&out)
    );
    // The scrape config, with its rule_files resolved beside it.
    let config = repo().join("dashboards/prometheus/prometheus.yml");
    let out = promtool(&["check", "config", &config.to_string_lossy()], None);
    assert!(
        out.status.success(),
        "promtool check config: {}",
        describe(&out)
    );
}

// ---- a real Prometheus ---------------------------------------------------------------------

/// The alert rules: (alert name, expression).
fn alert_rules() -> Vec<(String, String)> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&read("dashboards/prometheus/alerts.yml")).expect("alerts.yml");
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .expect("alert or record name");
            let expr = rule["expr"].as_str().expect("expr");
            out.push((name.to_string(), expr.to_string()));
        }
    }
    out
}

fn dashboard(name: &str) -> Value {
    let rel = format!("dashboards/grafana/{name}");
    serde_json::from_str(&read(&rel)).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
}

const DASHBOARDS: [&str; 2] = ["credwatch-soc.json", "credwatch-operator.json"];

/// The committed scrape config, pointed at `target` and made fast: 1 s scrape and rule
/// evaluation, the committed alert rules by absolute path, the `credwatch` job only.
fn prometheus_config(target: &str) -> String {
    use serde_yaml::{Mapping, Value as Y};
    let mut doc: Y = serde_yaml::from_str(&read("dashboards/prometheus/prometheus.yml"))
        .expect("prometheus.yml is YAML");
    let top = doc.as_mapping_mut().expect("prometheus.yml is a mapping");
    let mut global = top
        .get("global")
        .and_then(Y::as_mapping)
        .cloned()
        .unwrap_or_default();
    for k in ["scrape_interval", "evaluation_interval", "scrape_timeout"] {
        global.insert(Y::from(k), Y::from("1s"));
    }
    top.insert(Y::from("global"), Y::Mapping(global));
    let rules = repo().join("dashboards/prometheus/alerts.yml");
    top.insert(
        Y::from("rule_files"),
        Y::Sequence(vec![Y::from(rules.to_string_lossy().to_string())]),
    );
    let jobs = top
        .get("scrape_configs")
        .and_then(Y::as_sequence)
        .expect("scrape_configs");
    let mut job = jobs
        .iter()
        .find(|j| j["job_name"] == "credwatch")
        .and_then(Y::as_mapping)
        .cloned()
        .expect("a scrape job named credwatch");
    let mut static_config = Mapping::new();
    static_config.insert(
        Y::from("targets"),
        Y::Sequence(vec![Y::from(target.to_string())]),
    );
    job.insert(
        Y::from("static_configs"),
        Y::Sequence(vec![Y::Mapping(static_config)]),
    );
    top.insert(
        Y::from("scrape_configs"),
        Y::Sequence(vec![Y::Mapping(job)]),
    );
    serde_yaml::to_string(&doc).expect("YAML")
}

/// `label_values(SELECTOR, label)` of a Grafana variable query: (selector, label).
fn label_values_query(query: &str) -> Option<(String, String)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some((selector.trim().to_string(), label.trim().to_string()))
}

#[tokio::test]
async fn every_dashboard_and_alert_expression_returns_data_from_a_real_prometheus() {
    let mut s = scenario().await;
    let target = format!("127.0.0.1:{}", s.run.metrics_port);
    let prom = PrometheusServer::start(&prometheus_config(&target)).await;

    // Scraped, with the scenario's outcome, and long enough for rate() over 1m windows.
    prom.wait_for(
        "the credwatch target to be up",
        r#"up{job="credwatch"} == 1"#,
        WAIT,
        has_data,
    )
    .await;
    // A second theft and more garbage while Prometheus scrapes: rates over the scenario are
    // then non-zero (the first wave was counted before the first scrape).
    put_theft_and_garbage(&s.moto, 1).await;
    prom.wait_for(
        "both findings in Prometheus",
        &format!(r#"credwatch_findings_total{{rule="{RULE}"}} >= 2"#),
        WAIT,
        has_data,
    )
    .await;
    prom.wait_for(
        "every bad record in Prometheus",
        &format!(
            "sum(credwatch_bad_records_total) >= {}",
            2 * GARBAGE_RECORDS
        ),
        WAIT,
        has_data,
    )
    .await;
    prom.wait_for(
        "five scrapes",
        r#"count_over_time(up{job="credwatch"}[1m]) >= 5"#,
        WAIT,
        has_data,
    )
    .await;
    s.run.assert_running("Prometheus to scrape");

    let mut failures = Vec::new();
    let mut evaluated = 0;

    // Every panel expression of both dashboards.
    for name in DASHBOARDS {
        let d = dashboard(name);
        let exprs = dashboard_exprs(&d);
        assert!(
            exprs.len() >= 10,
            "{name}: only {} expressions",
            exprs.len()
        );
        for (panel, expr) in exprs {
            let q = substitute_grafana_variables(&expr);
            evaluated += 1;
            match prom.query(&q).await {
                Ok(r) if has_data(&r) => {}
                Ok(r) => failures.push(format!("{name} / {panel}: no data: {q}  => {r}")),
                Err(e) => failures.push(format!("{name} / {panel}: {e}: {q}")),
            }
        }
        // And the selector of every `label_values(...)` variable query.
        for v in d["templating"]["list"].as_array().expect("templating.list") {
            if v["type"] != "query" {
                continue;
            }
            let query = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .unwrap_or_default();
            let Some((selector, label)) = label_values_query(query) else {
                failures.push(format!(
                    "{name}: variable {}: not label_values: {query}",
                    v["name"]
                ));
                continue;
            };
            let q = substitute_grafana_variables(&selector);
            evaluated += 1;
            match prom.query(&q).await {
                Ok(Value::Array(series))
                    if series.iter().any(|x| x["metric"][&label].is_string()) => {}
                Ok(r) => failures.push(format!(
                    "{name}: variable {}: no series with label {label}: {q} => {r}",
                    v["name"]
                )),
                Err(e) => failures.push(format!("{name}: variable {}: {e}: {q}", v["name"])),
            }
        }
    }

    // Every alert rule: the expression evaluates; it returns data, or for the few quiet
    // conditions of a healthy system (QUIET_ALERTS), the selector under the condition does.
    let quiet: BTreeMap<&str, &str> = QUIET_ALERTS.iter().copied().collect();
    let rules = alert_rules();
    let names: BTreeSet<&str> = rules.iter().map(|(n, _)| n.as_str()).collect();
    for q in quiet.keys() {
        assert!(
            names.contains(q),
            "QUIET_ALERTS names {q}, which alerts.yml does not have"
        );
    }
    for (alert, expr) in &rules {
        evaluated += 1;
        let result = prom.query(expr).await;
        match (result, quiet.get(alert.as_str())) {
            (Err(e), _) => failures.push(format!("alert {alert}: {e}: {expr}")),
            (Ok(r), None) if !has_data(&r) => {
                failures.push(format!("alert {alert}: no data: {expr}"))
            }
            (Ok(_), None) => {}
            (Ok(_), Some(under)) => {
                let flat = expr.split_whitespace().collect::<Vec<_>>().join(" ");
                if !flat.contains(under) {
                    failures.push(format!(
                        "alert {alert}: QUIET_ALERTS selector {under:?} is not in its expression {flat:?}"
                    ));
                    continue;
                }
                match prom.query(under).await {
                    Ok(r) if has_data(&r) => {}
                    Ok(r) => {
                        failures.push(format!("alert {alert}: no data under it: {under} => {r}"))
                    }
                    Err(e) => failures.push(format!("alert {alert}: {e}: {under}")),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {evaluated} expressions failed:\n{}\n--- credwatch /metrics ---\n{}",
        failures.len(),
        failures.join("\n"),
        s.run.metrics().await
    );

    // The second wave happened under scraping: the latency quantiles are numbers, not NaN.
    for h in [
        "credwatch_detection_latency_seconds",
        "credwatch_event_to_finding_seconds",
    ] {
        let q = format!("histogram_quantile(0.99, sum by (le) (rate({h}_bucket[1m])))");
        let r = prom.query(&q).await.unwrap_or_else(|e| panic!("{q}: {e}"));
        let v = r[0]["value"][1].as_str().unwrap_or("missing");
        assert!(
            v.parse::<f64>().is_ok_and(f64::is_finite),
            "{q} => {r}: want a number"
        );
    }

    // Prometheus itself loaded and evaluated every rule without error.
    let deadline = Instant::now() + WAIT;
    loop {
        let data = prom.api("rules", &[]).await.expect("GET /api/v1/rules");
        let mut health = BTreeMap::new();
        for g in data["groups"].as_array().expect("groups") {
            for r in g["rules"].as_array().expect("rules") {
                health.insert(
                    r["name"].as_str().unwrap_or("?").to_string(),
                    (r["health"].clone(), r["lastError"].clone()),
                );
            }
        }
        let all_ok = health.len() == rules.len() && health.values().all(|(h, _)| h == "ok");
        if all_ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules not all evaluated ok: {health:?}\n--- prometheus log ---\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The bad-record alert is pending or firing: the scenario's garbage is over 1 %.
    let alerts = prom.api("alerts", &[]).await.expect("GET /api/v1/alerts");
    assert!(
        alerts["alerts"].as_array().is_some_and(|a| a
            .iter()
            .any(|x| x["labels"]["alertname"] == "CredwatchBadRecordRate")),
        "CredwatchBadRecordRate should be pending or firing: {alerts}"
    );
    s.run.assert_running("the end of the test");
}

// ---- the committed files -------------------------------------------------------------------

#[test]
fn grafana_variables_are_substituted_like_an_all_selection() {
    assert_eq!(
        substitute_grafana_variables(
            r#"sum by (shard) (rate(x{instance=~"$instance",shard=~"${shard}",r=~"${rule:regex}",j=~"[[job]]"}[$__rate_interval])) + y[$__range] + $__range_s"#
        ),
        r#"sum by (shard) (rate(x{instance=~".*",shard=~".*",r=~".*",j=~".*"}[1m])) + y[1h] + 3600"#
    );
    assert_eq!(
        substitute_grafana_variables("x[5m] offset 1h"),
        "x[5m] offset 1h"
    );
}

#[test]
fn dashboards_are_well_formed_grafana_json() {
    let mut uids = BTreeSet::new();
    for name in DASHBOARDS {
        let d = dashboard(name);
        let uid = d["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no uid"));
        assert!(uids.insert(uid.to_string()), "{name}: uid {uid} used twice");
        assert!(d["title"].is_string(), "{name}: no title");
        assert!(
            d["id"].is_null(),
            "{name}: id must be null for provisioning"
        );
        assert!(
            d["schemaVersion"].as_i64().is_some(),
            "{name}: no schemaVersion"
        );
        let vars: Vec<&Value> = d["templating"]["list"]
            .as_array()
            .expect("templating")
            .iter()
            .collect();
        let var_names: BTreeSet<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
        assert!(
            var_names.contains("datasource"),
            "{name}: no datasource variable"
        );

        let mut ids = BTreeSet::new();
        let mut stack: Vec<&Value> = d["panels"].as_array().expect("panels").iter().collect();
        while let Some(p) = stack.pop() {
            let title = p["title"].as_str().unwrap_or("?");
            let id = p["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("{name} / {title}: no id"));
            assert!(ids.insert(id), "{name} / {title}: panel id {id} used twice");
            let g = &p["gridPos"];
            let (x, w) = (g["x"].as_i64().unwrap_or(-1), g["w"].as_i64().unwrap_or(-1));
            assert!(
                x >= 0 && w > 0 && x + w <= 24,
                "{name} / {title}: gridPos {g}"
            );
            if let Some(children) = p["panels"].as_array() {
                stack.extend(children);
            }
            if p["type"] == "row" {
                continue;
            }
            assert!(
                p["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{name} / {title}: no description"
            );
            let targets = p["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{name} / {title}: no targets"));
            assert!(!targets.is_empty(), "{name} / {title}: no targets");
            // Tables of findings read GET /findings through Infinity, not PromQL.
            if p["datasource"]["type"] == INFINITY {
                let var = vars
                    .iter()
                    .find(|v| v["name"] == "findings_datasource")
                    .unwrap_or_else(|| panic!("{name} / {title}: no findings_datasource variable"));
                assert_eq!(var["type"], "datasource", "{name}: findings_datasource");
                assert_eq!(var["query"], INFINITY, "{name}: findings_datasource");
                assert_eq!(
                    p["datasource"]["uid"], "${findings_datasource}",
                    "{name} / {title}"
                );
                for t in targets {
                    findings_target(t, &format!("{name} / {title}"));
                }
                continue;
            }
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{name} / {title}");
            for t in targets {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name} / {title}: target without expr"));
                assert!(
                    expr.contains("credwatch_")
                        || expr.contains("process_")
                        || expr.contains("up{"),
                    "{name} / {title}: {expr}"
                );
                // Variables are used as regexes (an "All" selection is `.*`).
                for v in &var_names {
                    if *v == "datasource" {
                        continue;
                    }
                    let uses = expr.matches(&format!("\"${v}\"")).count();
                    let as_regex = expr.matches(&format!("=~\"${v}\"")).count();
                    assert_eq!(
                        uses, as_regex,
                        "{name} / {title}: ${v} not used with =~: {expr}"
                    );
                }
            }
        }
    }
}

/// The Infinity data source plugin (`yesoreyeram-infinity-datasource`).
const INFINITY: &str = "yesoreyeram-infinity-datasource";

/// Checks an Infinity target against what `GET /findings` offers: a JSON table of the `items`
/// of `view=table`, every column one of its keys; returns (URL, column selectors).
fn findings_target(t: &Value, what: &str) -> (String, Vec<String>) {
    assert_eq!(
        t["datasource"]["type"], INFINITY,
        "{what}: target data source"
    );
    assert_eq!(t["type"], "json", "{what}");
    assert_eq!(t["source"], "url", "{what}");
    assert_eq!(t["format"], "table", "{what}");
    assert_eq!(t["root_selector"], "items", "{what}");
    let url = t["url"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no url"));
    assert!(url.starts_with("/findings?"), "{what}: {url}");
    assert!(url.contains("view=table"), "{what}: {url}");
    let columns: Vec<String> = t["columns"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no columns"))
        .iter()
        .map(|c| {
            assert!(
                c["text"].as_str().is_some_and(|x| !x.is_empty()),
                "{what}: {c}"
            );
            c["selector"].as_str().expect("selector").to_string()
        })
        .collect();
    for c in &columns {
        assert!(
            credwatch::recent::query::TABLE_COLUMNS.contains(&c.as_str()),
            "{what}: column {c} is not a column of GET /findings?view=table"
        );
    }
    (url.to_string(), columns)
}

/// Every Infinity target of the dashboards: (dashboard / panel, URL, column selectors).
fn findings_targets() -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for name in DASHBOARDS {
        let d = dashboard(name);
        let mut stack: Vec<&Value> = d["panels"].as_array().expect("panels").iter().collect();
        while let Some(p) = stack.pop() {
            if let Some(children) = p["panels"].as_array() {
                stack.extend(children);
            }
            if p["datasource"]["type"] != INFINITY {
                continue;
            }
            let what = format!("{name} / {}", p["title"].as_str().unwrap_or("?"));
            for t in p["targets"].as_array().into_iter().flatten() {
                let (url, columns) = findings_target(t, &what);
                out.push((what.clone(), url, columns));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_findings_table_reads_columns_that_a_live_findings_endpoint_returns() {
    let targets = findings_targets();
    assert!(!targets.is_empty(), "no dashboard reads GET /findings");
    // What the SOC asked for: when, what, whose, from where (twice, with the place), which account.
    let soc: Vec<&(String, String, Vec<String>)> = targets
        .iter()
        .filter(|(w, _, _)| w.starts_with("credwatch-soc.json"))
        .collect();
    assert_eq!(soc.len(), 1, "{targets:?}");
    for c in [
        "detected_at",
        "rule",
        "severity",
        "session",
        "access_key_id",
        "first_origin",
        "first_place_detail",
        "second_origin",
        "second_place_detail",
        "account_id",
    ] {
        assert!(
            soc[0].2.iter().any(|x| x == c),
            "{}: no {c} column",
            soc[0].0
        );
    }

    let mut s = scenario().await;
    // Grafana's time range: from an hour ago (`${__from:date:iso}`).
    let from = (chrono::Utc::now() - chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    for (what, url, columns) in &targets {
        let url = url.replace("${__from:date:iso}", &from);
        assert!(!url.contains('$'), "{what}: a variable left in {url}");
        let (status, body) = s
            .run
            .get(&url)
            .await
            .unwrap_or_else(|| panic!("{what}: GET {url}: no answer"));
        assert_eq!(status, 200, "{what}: GET {url}: {body}");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        let items = v["items"].as_array().expect("items");
        assert!(
            items.iter().any(|i| i["rule"] == RULE),
            "{what}: GET {url}: the scenario's finding is not there: {v}"
        );
        for item in items {
            for c in columns {
                assert!(item.get(c).is_some(), "{what}: no {c} in {item}");
            }
            if item["rule"] == RULE {
                for c in columns {
                    assert!(!item[c].is_null(), "{what}: {c} is null in {item}");
                }
                let t = item["detected_at"].as_str().expect("detected_at");
                assert!(
                    chrono::DateTime::parse_from_rfc3339(t).is_ok(),
                    "{what}: detected_at {t}"
                );
            }
        }
    }
    s.run.assert_running("the end of the test");
}

#[test]
fn docker_compose_wires_localstack_credwatch_prometheus_and_grafana() {
    let text = read("docker/docker-compose.yml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("docker-compose.yml is YAML");
    let services = doc["services"].as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["localstack", "credwatch", "prometheus", "grafana"]),
        "services"
    );
    let docker = repo().join("docker");
    for (name, svc) in services {
        let name = name.as_str().expect("service name");
        assert!(
            svc["image"].is_string() || svc["build"].is_mapping(),
            "{name}: neither image nor build"
        );
        // Every port is published on loopback only.
        for p in svc["ports"].as_sequence().into_iter().flatten() {
            let p = p
                .as_str()
                .unwrap_or_else(|| panic!("{name}: port {p:?} is not a string"));
            assert!(
                p.starts_with("127.0.0.1:"),
                "{name}: port {p} is not bound to 127.0.0.1"
            );
        }
        // Every bind mount's source exists.
        for v in svc["volumes"].as_sequence().into_iter().flatten() {
            let v = v.as_str().expect("short volume syntax");
            let source = v.split(':').next().expect("source");
            if source.starts_with('.') {
                let path = docker.join(source);
                assert!(
                    path.exists(),
                    "{name}: mount source {source} ({}) is missing",
                    path.display()
                );
            }
        }
    }
    let ls = &doc["services"]["localstack"];
    let services_env = ls["environment"]["SERVICES"].as_str().expect("SERVICES");
    for s in ["kinesis", "logs", "dynamodb"] {
        assert!(
            services_env.split(',').any(|x| x == s),
            "LocalStack SERVICES lacks {s}"
        );
    }
    let mounts: Vec<&str> = ls["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        mounts
            .iter()
            .any(|m| m.contains("/etc/localstack/init/ready.d/")),
        "the LocalStack init script is not mounted as a ready hook: {mounts:?}"
    );
    let init = read("docker/localstack/init-aws.sh");
    for call in [
        "kinesis create-stream",
        "logs create-log-group",
        "logs put-subscription-filter",
    ] {
        assert!(init.contains(call), "init-aws.sh does not call {call}");
    }

    let cw = &doc["services"]["credwatch"];
    assert_eq!(
        cw["build"]["context"], "..",
        "credwatch builds from the repository root"
    );
    assert_eq!(cw["build"]["dockerfile"], "docker/Dockerfile");
    assert_eq!(
        cw["depends_on"]["localstack"]["condition"],
        "service_healthy"
    );
    assert_eq!(cw["environment"]["CREDWATCH_METRICS_ADDR"], "0.0.0.0:9898");
    let endpoint = cw["environment"]["CREDWATCH_ENDPOINT_URL"]
        .as_str()
        .expect("endpoint");
    assert!(endpoint.starts_with("http://localstack:"), "{endpoint}");

    // Prometheus scrapes credwatch where compose runs it, with the alert rules mounted beside.
    let scrape: serde_yaml::Value =
        serde_yaml::from_str(&read("dashboards/prometheus/prometheus.yml"))
            .expect("prometheus.yml");
    let targets = format!("{:?}", scrape["scrape_configs"]);
    assert!(
        targets.contains("credwatch:9898"),
        "prometheus.yml does not scrape credwatch:9898: {targets}"
    );
    let prom_mounts = format!("{:?}", doc["services"]["prometheus"]["volumes"]);
    assert!(
        prom_mounts.contains("alerts.yml:/etc/prometheus/alerts.yml"),
        "{prom_mounts}"
    );
    assert!(
        prom_mounts.contains("prometheus.yml:/etc/prometheus/prometheus.yml"),
        "{prom_mounts}"
    );

    // Grafana: the provisioning folders and the dashboards where the provider looks for them.
    let provider: serde_yaml::Value = serde_yaml::from_str(&read(
        "dashboards/grafana/provisioning/dashboards/credwatch.yaml",
    ))
    .expect("dashboard provider YAML");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    let grafana_mounts: Vec<&str> = doc["services"]["grafana"]["volumes"]
        .as_sequence()
        .expect("grafana volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        grafana_mounts
            .iter()
            .any(|m| m.starts_with("../dashboards/grafana:") && m.contains(&format!(":{path}"))),
        "the dashboards are not mounted at the provider's path {path}: {grafana_mounts:?}"
    );
    for sub in ["datasources", "dashboards"] {
        assert!(
            grafana_mounts
                .iter()
                .any(|m| m.contains(&format!(":/etc/grafana/provisioning/{sub}"))),
            "provisioning/{sub} is not mounted: {grafana_mounts:?}"
        );
    }
    let ds: serde_yaml::Value = serde_yaml::from_str(&read(
        "dashboards/grafana/provisioning/datasources/prometheus.yaml",
    ))
    .expect("datasource YAML");
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
    assert_eq!(ds["datasources"][0]["url"], "http://prometheus:9090");

    // The findings table: Grafana installs Infinity, whose data source reaches credwatch with
    // the bearer token credwatch requires (bound to 0.0.0.0 in its container, /findings is off
    // without one).
    let grafana = &doc["services"]["grafana"];
    let plugins = grafana["environment"]["GF_INSTALL_PLUGINS"]
        .as_str()
        .unwrap_or_default();
    assert!(
        plugins.split(',').any(|p| p.trim() == INFINITY),
        "{plugins:?}"
    );
    let infinity: serde_yaml::Value = serde_yaml::from_str(&read(
        "dashboards/grafana/provisioning/datasources/infinity.yaml",
    ))
    .expect("Infinity datasource YAML");
    let inf = &infinity["datasources"][0];
    assert_eq!(inf["type"], INFINITY);
    assert_eq!(inf["url"], "http://credwatch:9898");
    assert_eq!(inf["jsonData"]["httpHeaderName1"], "Authorization");
    let header = inf["secureJsonData"]["httpHeaderValue1"]
        .as_str()
        .expect("the Authorization header value");
    let var = header
        .strip_prefix("Bearer ${")
        .and_then(|v| v.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not Bearer ${{VAR}}: {header}"));
    assert_eq!(
        cw["environment"]["CREDWATCH_METRICS__FINDINGS_TOKEN_ENV"], var,
        "credwatch reads the token from the variable Grafana's header uses"
    );
    assert_eq!(
        cw["environment"][var], grafana["environment"][var],
        "credwatch and Grafana share the token"
    );

    // And Docker Compose itself, when it is here: `docker compose` or $CREDWATCH_DOCKER_COMPOSE
    // (tests/run.sh provides the latter when the docker CLI has no compose plugin).
    let compose: Option<Vec<String>> = if Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        Some(vec!["docker".into(), "compose".into()])
    } else {
        std::env::var("CREDWATCH_DOCKER_COMPOSE")
            .ok()
            .map(|c| vec![c])
    };
    match compose {
        Some(cmd) => {
            let out = Command::new(&cmd[0])
                .args(&cmd[1..])
                .arg("-f")
                .arg(repo().join("docker/docker-compose.yml"))
                .args(["config", "--quiet"])
                .output()
                .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
            assert!(out.status.success(), "{cmd:?} config: {}", describe(&out));
        }
        None => eprintln!(
            "no docker compose here (neither the plugin nor CREDWATCH_DOCKER_COMPOSE): \
             docker-compose.yml checked as YAML only"
        ),
    }
}

/// The HEALTHCHECK's `CMD [...]` of the Dockerfile, as an argument list.
fn healthcheck_command(dockerfile: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.trim_start().starts_with("HEALTHCHECK"))
        .expect("a HEALTHCHECK");
    let json = &line[line.find("CMD").expect("HEALTHCHECK ... CMD") + 3..];
    serde_json::from_str(json.trim())
        .unwrap_or_else(|e| panic!("HEALTHCHECK CMD is not exec-form JSON ({e}): {json}"))
}

#[test]
fn dockerfile_builds_like_the_readme_and_runs_as_a_non_root_user() {
    let dockerfile = read("docker/Dockerfile");
    let build = "cargo build --release --locked";
    assert!(
        dockerfile.contains(build),
        "the Dockerfile does not run `{build}`"
    );
    assert!(
        read("docker/README.md").contains(build),
        "docker/README.md does not say `{build}`"
    );
    assert!(
        dockerfile.contains("COPY Cargo.toml Cargo.lock"),
        "--locked needs Cargo.lock in the image"
    );
    assert!(
        dockerfile.matches("\nFROM ").count() >= 2,
        "not a multi-stage build"
    );
    assert!(
        dockerfile.contains("ca-certificates"),
        "the runtime stage needs ca-certificates"
    );
    let user = dockerfile
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(
        !user.contains("root") && !user.contains(" 0"),
        "runs as root: {user}"
    );
    let cmd = healthcheck_command(&dockerfile);
    assert!(
        cmd.join(" ").contains("/livez"),
        "the HEALTHCHECK does not ask /livez: {cmd:?}"
    );
}

#[tokio::test]
async fn the_dockerfile_healthcheck_command_tells_live_from_dead() {
    // The HEALTHCHECK needs no HTTP client: bash's /dev/tcp. Run it here against a live
    // credwatch (its metrics server needs no stream to answer /livez) and a closed port.
    let cmd = healthcheck_command(&read("docker/Dockerfile"));
    let dir = tempfile::tempdir().expect("temp dir");
    // No emulator: credwatch serves /livez while it retries ListShards against a closed port.
    let dead_port = free_port();
    let mut run = Run::start(&format!("http://127.0.0.1:{dead_port}"), dir.path());
    let port = run.metrics_port;
    run.wait_for("GET /livez to answer 200", WAIT, || async move {
        match http()
            .get(format!("http://127.0.0.1:{port}/livez"))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    // Not ready: no shard is owned.
    let ready = run.get("/readyz").await;
    assert!(
        matches!(ready, Some((503, _))),
        "/readyz with no shard: {ready:?}"
    );
    let health = |addr: String| {
        Command::new(&cmd[0])
            .args(&cmd[1..])
            .env("CREDWATCH_METRICS_ADDR", addr)
            .output()
            .expect("run the HEALTHCHECK command")
    };
    let live = health(format!("0.0.0.0:{port}"));
    assert!(
        live.status.success(),
        "HEALTHCHECK against a live credwatch: {}",
        describe(&live)
    );
    let dead = health(format!("0.0.0.0:{}", free_port()));
    assert!(
        !dead.status.success(),
        "HEALTHCHECK against a closed port succeeded"
    );
    run.assert_running("the end of the test");
}
