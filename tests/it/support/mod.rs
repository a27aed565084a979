//! Harness for end-to-end tests: a `wrangler dev` worker on a free loopback port with
//! fresh local state, a recording stand-in for the ad platform, and a tiny HTTP client.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Operator vars pointing all six platforms (and Google's OAuth endpoint) at one
/// stand-in, with TrackLayer's Google app credentials for tests.
pub fn all_platforms_at(base: &str) -> Vec<(&'static str, String)> {
    let mut vars: Vec<(&'static str, String)> = [
        "META_API_BASE_URL",
        "KLAVIYO_API_BASE_URL",
        "TIKTOK_API_BASE_URL",
        "GA4_API_BASE_URL",
        "LINKEDIN_API_BASE_URL",
        "GOOGLE_ADS_API_BASE_URL",
    ]
    .into_iter()
    .map(|name| (name, base.to_string()))
    .collect();
    vars.extend([
        ("GOOGLE_OAUTH_TOKEN_URL", format!("{base}/token")),
        ("GOOGLE_ADS_DEVELOPER_TOKEN", "dev-token-e2e".into()),
        (
            "GOOGLE_OAUTH_CLIENT_ID",
            "tracklayer-e2e.apps.googleusercontent.com".into(),
        ),
        (
            "GOOGLE_OAUTH_CLIENT_SECRET",
            "oauth-client-secret-e2e".into(),
        ),
    ]);
    vars
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A Stripe fixture with a fresh event id and creation time.
pub fn stripe_event(fixture: &str, event_id: &str) -> Vec<u8> {
    let path = format!("{ROOT}/tests/fixtures/stripe/{fixture}");
    let mut event: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    event["id"] = serde_json::json!(event_id);
    event["created"] = serde_json::json!(now() - 30);
    serde_json::to_vec(&event).unwrap()
}

/// A `LinkedIn-Version` within its last 30 days today (LinkedIn keeps each monthly
/// version one year; we date its sunset the 15th of that month a year on).
pub fn linkedin_version_near_sunset() -> String {
    let today = tracklayer::time::utc_date(now());
    let (year, month, day): (i64, i64, i64) = (
        today[..4].parse().unwrap(),
        today[5..7].parse().unwrap(),
        today[8..10].parse().unwrap(),
    );
    let (year, month) = if day < 15 {
        (year, month)
    } else if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    format!("{}{month:02}", year - 1)
}

/// Posts a Stripe webhook body signed with `secret` the way Stripe signs it.
pub fn post_stripe(worker: &Worker, merchant: &str, secret: &str, body: &[u8]) -> HttpResponse {
    let target = format!("/v1/integrations/stripe/subscription-events?merchant_id={merchant}");
    let signature = tracklayer::sources::stripe::sign(secret, now(), body);
    http(
        "POST",
        worker.port,
        &target,
        &[
            ("content-type", "application/json"),
            ("Stripe-Signature", &signature),
        ],
        body,
    )
}

/// Requests whose body mentions this event id (every platform carries our id).
pub fn carrying(requests: Vec<Recorded>, event_id: &str) -> Vec<Recorded> {
    requests
        .into_iter()
        .filter(|r| r.body.contains(event_id))
        .collect()
}

/// Per path fragment, the answers still to give.
type Scripts = Arc<Mutex<Vec<(String, Vec<(u16, String)>)>>>;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");
pub const ADMIN_TOKEN: &str = "e2e-admin-token";
/// A test-only master key (32 bytes of 0x2a), current key id `t1`.
pub const MASTER_KEYS: &str = "t1:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A platform stand-in: records every request, answers from a per-path-fragment script
/// (first matching fragment wins; when a script runs out it answers 200).
pub struct StandIn {
    pub port: u16,
    requests: Arc<Mutex<Vec<Recorded>>>,
    scripts: Scripts,
}

impl StandIn {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind stand-in");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let scripts: Scripts = Arc::new(Mutex::new(Vec::new()));
        let (req_log, script_table) = (requests.clone(), scripts.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let Some(recorded) = read_request(&stream) else {
                    continue;
                };
                let (status, body) = {
                    let mut table = script_table.lock().unwrap();
                    table
                        .iter_mut()
                        .find(|(fragment, _)| recorded.target.contains(fragment.as_str()))
                        .and_then(|(_, answers)| (!answers.is_empty()).then(|| answers.remove(0)))
                        .unwrap_or((
                            200,
                            r#"{"events_received":1,"messages":[],"fbtrace_id":"AbCdEf"}"#.into(),
                        ))
                };
                req_log.lock().unwrap().push(recorded);
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        StandIn {
            port,
            requests,
            scripts,
        }
    }

    /// Queues answers for requests whose path contains `path_fragment` (appended to the
    /// fragment's earlier answers, if any).
    pub fn script(&self, path_fragment: &str, answers: Vec<(u16, &str)>) {
        let answers: Vec<(u16, String)> = answers
            .into_iter()
            .map(|(s, b)| (s, b.to_string()))
            .collect();
        let mut scripts = self.scripts.lock().unwrap();
        match scripts
            .iter_mut()
            .find(|(fragment, _)| fragment == path_fragment)
        {
            Some((_, queued)) => queued.extend(answers),
            None => scripts.push((path_fragment.to_string(), answers)),
        }
    }

    /// Drops the answers still queued for `path_fragment`: it answers 200 from now on.
    pub fn unscript(&self, path_fragment: &str) {
        self.scripts
            .lock()
            .unwrap()
            .retain(|(fragment, _)| fragment != path_fragment);
    }

    pub fn requests_to(&self, path_fragment: &str) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.target.contains(path_fragment))
            .cloned()
            .collect()
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn read_request(stream: &TcpStream) -> Option<Recorded> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut length = 0usize;
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(Recorded {
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub struct HttpResponse {
    pub status: u16,
    pub body: String,
    /// Status line and headers as received.
    pub head: String,
}

impl HttpResponse {
    /// A response header, case-insensitively.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Minimal HTTP/1.1 client (Connection: close), enough for loopback tests.
pub fn http(
    method: &str,
    port: u16,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to worker");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    // Read the head, then exactly the body: the dev server may keep the socket open.
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let body = if let Some(length) = header("content-length").and_then(|v| v.parse::<usize>().ok())
    {
        let mut buf = vec![0u8; length];
        reader.read_exact(&mut buf).unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line).unwrap();
            let size = usize::from_str_radix(size_line.trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            let mut chunk = vec![0u8; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            out.extend_from_slice(&chunk[..size]);
        }
        String::from_utf8_lossy(&out).into_owned()
    } else {
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
        rest
    };
    HttpResponse { status, body, head }
}

/// A running `wrangler dev` with its own state directory, stopped on drop.
pub struct Worker {
    pub port: u16,
    child: Child,
    state_dir: PathBuf,
    log_path: PathBuf,
}

fn run(script: &str, args: &[&str]) {
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!("source scripts/env.sh && {script} \"$@\""))
        .arg("bash")
        .args(args)
        .current_dir(ROOT)
        // wrangler may read stdin; never let it consume the caller's.
        .stdin(Stdio::null())
        .status()
        .expect("run bash");
    assert!(
        status.success(),
        "`{script} {}` failed; run `bash scripts/setup.sh` first",
        args.join(" ")
    );
}

impl Worker {
    /// Builds the worker (incremental), applies the global and both regional migrations
    /// to fresh state, then starts `wrangler dev` with the operator token, a master key
    /// and the given operator vars. Merchants are then created through the admin API.
    pub fn start(vars: &[(&str, String)]) -> Self {
        run("bash scripts/build-worker.sh", &[]);
        let state_dir = std::env::temp_dir().join(format!(
            "tracklayer-e2e-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&state_dir).unwrap();
        let state = state_dir.to_str().unwrap();
        for binding in ["DB", "DB_US", "DB_EU"] {
            run(
                &format!("wrangler d1 migrations apply {binding} --local --persist-to"),
                &[state],
            );
        }
        Self::start_on(state_dir, vars)
    }

    /// Starts `wrangler dev` on an existing state directory (a restart after a crash).
    pub fn start_on(state_dir: PathBuf, vars: &[(&str, String)]) -> Self {
        let state = state_dir.to_str().unwrap().to_string();
        let port = free_port();
        let log_path = state_dir.join(format!("wrangler-{port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = String::from(
            "source scripts/env.sh && export TRACKLAYER_SKIP_BUILD=1 && exec wrangler dev --local --ip 127.0.0.1 \
             --show-interactive-dev-session=false --port \"$1\" --persist-to \"$2\"",
        );
        let defaults = [
            ("ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
            ("MASTER_KEYS", MASTER_KEYS.to_string()),
            // Local workerd refuses `namespace.jurisdiction()`; see src/edge/regions.rs.
            ("LOCAL_WORKERD_WITHOUT_JURISDICTIONS", "true".to_string()),
            // Conversions reported by sibling notifications wait this long (60 s live).
            ("SIBLING_WAIT_SECONDS", "2".to_string()),
        ];
        for (name, value) in defaults
            .iter()
            .map(|(n, v)| (n, v))
            .chain(vars.iter().map(|(n, v)| (n, v)))
        {
            command.push_str(&format!(" --var '{name}:{value}'"));
        }
        // setsid: a session of its own, without our controlling terminal (wrangler
        // touches the tty), and one process group to stop on drop.
        let child = Command::new("setsid")
            .arg("bash")
            .arg("-c")
            .arg(command)
            .arg("bash")
            .arg(port.to_string())
            .arg(&state)
            .current_dir(ROOT)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn wrangler dev");
        let worker = Worker {
            port,
            child,
            state_dir,
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http("GET", port, "/healthz", &[], b"").status == 200
            {
                return worker;
            }
            thread::sleep(Duration::from_millis(500));
        }
        panic!("wrangler dev did not become ready; log:\n{}", worker.log());
    }

    /// SIGKILL to the whole `wrangler dev` process group, as a crash would: no shutdown
    /// code runs. Returns the state directory, kept for a restart with [`Self::start_on`].
    pub fn kill_hard(mut self) -> PathBuf {
        let group = -(self.child.id() as libc::pid_t);
        signal_group(group, libc::SIGKILL);
        let _ = self.child.wait();
        let state_dir = std::mem::take(&mut self.state_dir);
        std::mem::forget(self);
        state_dir
    }

    /// An operator API call with the test's admin token.
    pub fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> HttpResponse {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        http(
            method,
            self.port,
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
        )
    }

    /// A new API key for `merchant`, created through the admin API.
    pub fn create_api_key(&self, merchant: &str) -> String {
        let path = format!("/v1/admin/merchants/{merchant}/api-keys");
        let created = self.admin("POST", &path, None);
        match created.json()["api_key"].as_str() {
            Some(key) => key.to_string(),
            None => panic!("{path}: {} {}", created.status, created.body),
        }
    }

    /// Creates a merchant (`{"merchant_id", "plan", "region", ...}`) and its integrations
    /// through the admin API, as an operator would.
    pub fn provision(
        &self,
        merchant: Value,
        sources: &[(&str, Value)],
        destinations: &[(&str, Value)],
    ) {
        let id = merchant["merchant_id"].as_str().unwrap().to_string();
        let created = self.admin("POST", "/v1/admin/merchants", Some(&merchant));
        assert_eq!(created.status, 201, "create {id}: {}", created.body);
        for (kind, items) in [("sources", sources), ("destinations", destinations)] {
            for (name, config) in items {
                let path = format!("/v1/admin/merchants/{id}/{kind}/{name}");
                let put = self.admin("PUT", &path, Some(config));
                assert_eq!(put.status, 200, "{path}: {}", put.body);
            }
        }
    }

    /// Rows from one of the local D1 databases (`DB`, `DB_US`, `DB_EU`), read directly.
    pub fn d1_rows(&self, binding: &str, sql: &str) -> Vec<Value> {
        let run = || {
            Command::new("bash")
                .arg("-c")
                .arg("source scripts/env.sh && wrangler d1 execute \"$1\" --local --persist-to \"$2\" --json --command \"$3\"")
                .arg("bash")
                .arg(binding)
                .arg(self.state_dir.to_str().unwrap())
                .arg(sql)
                .current_dir(ROOT)
                .stdin(Stdio::null())
                .output()
                .expect("run wrangler d1 execute")
        };
        // This second process shares the SQLite file with the running worker: while the
        // worker holds the write lock the read is refused SQLITE_BUSY; try again.
        let mut output = run();
        for _ in 0..5 {
            if output.status.success()
                || !String::from_utf8_lossy(&output.stderr).contains("SQLITE_BUSY")
            {
                break;
            }
            thread::sleep(Duration::from_millis(500));
            output = run();
        }
        assert!(
            output.status.success(),
            "d1 execute failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let parsed: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "d1 output not JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        });
        parsed[0]["results"].as_array().cloned().unwrap_or_default()
    }

    /// `n` of a `SELECT count(*) AS n …` on one of the local databases.
    pub fn count(&self, binding: &str, sql: &str) -> i64 {
        self.d1_rows(binding, sql)[0]["n"].as_i64().unwrap()
    }

    /// Rows of `sql` from every local merchant object's SQLite (`region`: only the
    /// objects of that region), read directly, concatenated.
    pub fn object_rows(&self, region: Option<&str>, sql: &str) -> Vec<Value> {
        object_rows_in(&self.state_dir, region, sql)
    }

    /// Sum of `n` of a `SELECT count(*) AS n …` over the merchant objects.
    pub fn object_count(&self, region: Option<&str>, sql: &str) -> i64 {
        self.object_rows(region, sql)
            .iter()
            .map(|r| r["n"].as_i64().unwrap_or(0))
            .sum()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // wrangler starts workerd as a child: signal the whole process group (setsid made
        // the child its leader). kill(2) directly: procps `kill -TERM -PGID` left the group
        // running here (the test then hung in wait), and `kill -s TERM -- -PGID` is a usage error.
        let group = -(self.child.id() as libc::pid_t);
        signal_group(group, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        signal_group(group, libc::SIGKILL);
        let _ = self.child.wait();
        if std::env::var_os("TRACKLAYER_KEEP_E2E_STATE").is_none() {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
    }
}

/// The SQLite files of the local `Merchant` Durable Objects under a state directory.
pub fn object_files(state_dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(classes) = std::fs::read_dir(state_dir.join("v3").join("do")) else {
        return files;
    };
    for class in classes.flatten() {
        if !class.file_name().to_string_lossy().ends_with("-Merchant") {
            continue;
        }
        for file in std::fs::read_dir(class.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if file.path().extension().is_some_and(|e| e == "sqlite") {
                files.push(file.path());
            }
        }
    }
    files.sort();
    files
}

fn sql_value(value: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(f) => Value::from(f),
        ValueRef::Text(t) => Value::from(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::from(format!("<{} bytes>", b.len())),
    }
}

/// [`Worker::object_rows`] on a state directory (also while the worker is stopped).
pub fn object_rows_in(state_dir: &Path, region: Option<&str>, sql: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    for file in object_files(state_dir) {
        let db = rusqlite::Connection::open(&file).expect("open object sqlite");
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        if let Some(region) = region {
            let own: Option<String> = db
                .query_row("SELECT region FROM object_meta WHERE id = 1", [], |r| {
                    r.get(0)
                })
                .ok();
            if own.as_deref() != Some(region) {
                continue;
            }
        }
        let mut statement = match db.prepare(sql) {
            Ok(statement) => statement,
            // An object created but never written has no tables yet.
            Err(err) if err.to_string().contains("no such table") => continue,
            Err(err) => panic!("{sql}: {err}"),
        };
        let names: Vec<String> = statement
            .column_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        let mut result = statement.query([]).unwrap();
        while let Some(row) = result.next().unwrap() {
            let mut object = serde_json::Map::new();
            for (i, name) in names.iter().enumerate() {
                object.insert(name.clone(), sql_value(row.get_ref(i).unwrap()));
            }
            rows.push(Value::Object(object));
        }
    }
    rows
}

/// Runs a write on every merchant object's SQLite: only while the worker is stopped.
pub fn object_execute_in(state_dir: &Path, sql: &str) {
    for file in object_files(state_dir) {
        let db = rusqlite::Connection::open(&file).expect("open object sqlite");
        if let Err(err) = db.execute_batch(sql) {
            assert!(err.to_string().contains("no such table"), "{sql}: {err}");
        }
    }
}

fn signal_group(group: libc::pid_t, signal: libc::c_int) {
    // A group id of 0 or -1 would signal our own group or every process.
    if group < -1 {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(group, signal);
        }
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        thread::sleep(Duration::from_millis(300));
    }
}
