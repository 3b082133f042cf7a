//! A real Prometheus for integration tests: `promtool` checks and a `prometheus` server on
//! 127.0.0.1 (free port, storage in a temporary folder), killed on drop.
//!
//! The binaries come from `CREDWATCH_PROMETHEUS_DIR` (set by `tests/run.sh`), else from
//! `tests/stack/ensure-prometheus.sh`, which unpacks Debian's `prometheus` package under `.local/`
//! when needed: a test never skips for want of Prometheus.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::{give_up, launch, START_ATTEMPTS};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The folder holding `prometheus` and `promtool`.
pub fn prometheus_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = match std::env::var_os("CREDWATCH_PROMETHEUS_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
                // Quick when it is already unpacked; fetches Debian's package otherwise.
                let out = Command::new("bash")
                    .arg(repo.join("tests/stack/ensure-prometheus.sh"))
                    .stdin(Stdio::null())
                    .output()
                    .expect("run tests/stack/ensure-prometheus.sh");
                assert!(
                    out.status.success(),
                    "tests/stack/ensure-prometheus.sh failed ({}):\n{}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let stdout = String::from_utf8_lossy(&out.stdout);
                PathBuf::from(
                    stdout
                        .lines()
                        .last()
                        .expect("ensure-prometheus.sh prints the folder")
                        .trim(),
                )
            }
        };
        for bin in ["prometheus", "promtool"] {
            assert!(
                dir.join(bin).is_file(),
                "{} has no {bin}: unset CREDWATCH_PROMETHEUS_DIR or run tests/stack/ensure-prometheus.sh",
                dir.display()
            );
        }
        dir
    })
}

pub fn promtool_path() -> PathBuf {
    prometheus_dir().join("promtool")
}

/// Runs `promtool ARGS` with `stdin` as its standard input.
pub fn promtool(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(promtool_path())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn promtool {args:?}: {e}"));
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("promtool stdin");
        pipe.write_all(text.as_bytes())
            .expect("write to promtool's stdin");
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for promtool {args:?}: {e}"))
}

/// `status`, stdout and stderr of a finished command, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A port that was free on 127.0.0.1 a moment ago.
pub use super::process::free_port;

/// An HTTP client for 127.0.0.1 only: never a proxy.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

/// A Prometheus server process, killed on drop.
pub struct PrometheusServer {
    child: Child,
    port: u16,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus on a free loopback port with the configuration `config` (YAML text),
    /// written beside a fresh TSDB folder, and waits until it is ready.
    pub async fn start(config: &str) -> PrometheusServer {
        let bin = prometheus_dir().join("prometheus");
        let dir = tempfile::tempdir().expect("temp dir for prometheus");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let check = promtool(&["check", "config", &config_path.to_string_lossy()], None);
        assert!(
            check.status.success(),
            "promtool check config on the generated configuration:\n{}\n--- config ---\n{config}",
            describe(&check)
        );
        let mut last_error = String::new();
        for attempt in 0..START_ATTEMPTS {
            let port = free_port();
            let log_path = dir.path().join(format!("prometheus-{port}.log"));
            let tsdb = dir.path().join(format!("tsdb-{attempt}"));
            let mut cmd = Command::new(&bin);
            cmd.arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.tsdb.path={}", tsdb.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn");
            let mut child = launch(&mut cmd, &log_path, "prometheus");
            match wait_ready(&mut child, port).await {
                Ok(()) => {
                    return PrometheusServer {
                        child,
                        port,
                        log_path,
                        _dir: dir,
                    }
                }
                Err(e) => last_error = give_up(child, &log_path, "prometheus", e),
            }
        }
        panic!("prometheus did not start after {START_ATTEMPTS} attempts: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `GET /api/v1/<path>`: the `data` of a `success` answer, else the error.
    pub async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let url = format!("http://127.0.0.1:{}/api/v1/{path}", self.port);
        let resp = http()
            .get(&url)
            .query(params)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .map_err(|e| format!("GET {url}: {status}, body is not JSON: {e}"))?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!(
                "{status} {}: {}",
                body["errorType"].as_str().unwrap_or("?"),
                body["error"].as_str().unwrap_or("?")
            ))
        }
    }

    /// An instant query: its result (an array of samples, or a scalar), else the error.
    pub async fn query(&self, expr: &str) -> Result<Value, String> {
        let data = self.api("query", &[("query", expr)]).await?;
        Ok(data["result"].clone())
    }

    /// Polls `query(expr)` every 250 ms until `done` accepts its result, for at most `timeout`;
    /// panics with the last result and the log otherwise.
    pub async fn wait_for(
        &self,
        what: &str,
        expr: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.query(expr).await;
            if let Ok(v) = &got {
                if done(v) {
                    return v.clone();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what} ({expr}); last answer: \
                     {got:?}\n--- prometheus log ---\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the server at `port` answers `GET /-/ready` with 200, while `child` runs.
async fn wait_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let url = format!("http://127.0.0.1:{port}/-/ready");
    let client = http();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("prometheus exited early: {status}"));
        }
        if let Ok(resp) = client.get(&url).send().await {
            if resp.status().is_success() {
                // Still ours? A server that lost the port race exits instead of serving.
                return match child.try_wait().map_err(|e| e.to_string())? {
                    None => Ok(()),
                    Some(status) => Err(format!("prometheus exited: {status}")),
                };
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no answer on {url} after {READY_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a query result holds data: a non-empty vector or matrix, or a scalar/string.
pub fn has_data(result: &Value) -> bool {
    match result {
        Value::Array(a) => !a.is_empty(),
        Value::Null => false,
        _ => true,
    }
}

/// Replaces Grafana's variables in a dashboard expression: the built-in intervals by fixed
/// durations (`$__rate_interval` and `$__interval` → `1m`, `$__range` → `1h`,
/// `$__range_s` → `3600`), and every other variable (`$shard`, `${instance}`, `[[job]]`,
/// `${rule:regex}`) by `.*`, which is what an "All" selection sends.
pub fn substitute_grafana_variables(expr: &str) -> String {
    let builtin = |name: &str| -> Option<&'static str> {
        match name {
            "__rate_interval" | "__interval" => Some("1m"),
            "__interval_ms" => Some("60000"),
            "__range" => Some("1h"),
            "__range_s" => Some("3600"),
            "__range_ms" => Some("3600000"),
            _ => None,
        }
    };
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find(['$', '[']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (name, len) = if let Some(t) = tail.strip_prefix("${") {
            let end = t.find('}').unwrap_or(t.len());
            let name = t[..end].split(':').next().unwrap_or("");
            (Some(name), 2 + end + 1)
        } else if let Some(t) = tail.strip_prefix("[[") {
            match t.find("]]") {
                Some(end) if t[..end].chars().all(is_name) => (Some(&t[..end]), 2 + end + 2),
                _ => (None, 1),
            }
        } else if let Some(t) = tail.strip_prefix('$') {
            let end = t.find(|c: char| !is_name(c)).unwrap_or(t.len());
            if end == 0 {
                (None, 1)
            } else {
                (Some(&t[..end]), 1 + end)
            }
        } else {
            (None, 1)
        };
        match name {
            Some(n) => out.push_str(builtin(n).unwrap_or(".*")),
            None => out.push_str(&tail[..len]),
        }
        rest = &tail[len.min(tail.len())..];
    }
    out.push_str(rest);
    out
}

/// Every `targets[].expr` in a Grafana dashboard, with the title of its panel, found
/// recursively (rows, library panels, nested panels).
pub fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                let title = m.get("title").and_then(Value::as_str).unwrap_or(title);
                if let Some(Value::Array(targets)) = m.get("targets") {
                    for t in targets {
                        if let Some(expr) = t.get("expr").and_then(Value::as_str) {
                            out.push((title.to_string(), expr.to_string()));
                        }
                    }
                }
                for (k, child) in m {
                    if k != "targets" {
                        walk(child, title, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "", &mut out);
    out
}
