//! `bedside serve` run as the real binary on loopback: hostile input, API keys, logs without
//! patient text, many clients at once with mixed adapters, queue limits, disconnects, TLS, and
//! the official `openai` Python client. Every request loop is bounded; every server is killed
//! when its test ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const SENTINEL: &str = "ZQX-PATIENT-SENTINEL-7731";

struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT` (or https).
    url: String,
    addr: String,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::try_start(args, env).unwrap_or_else(|(e, logs)| panic!("{e}\n--- server output ---\n{logs}"))
    }

    fn try_start(args: &[&str], env: &[(&str, &str)]) -> Result<Server, (String, String)> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::fs::File::create(dir.path().join("stdout.log")).unwrap();
        let err = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bedside"));
        cmd.arg("serve").args(["--port", "0"]).args(args).env_remove("BEDSIDE_MODEL").env_remove("RUST_LOG");
        cmd.envs(env.iter().copied()).stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().unwrap();
        let mut s = Server { child, url: String::new(), addr: String::new(), dir };
        let start = Instant::now();
        while s.url.is_empty() {
            if start.elapsed() > Duration::from_secs(60) {
                return Err(("the server did not say where it listens within 60 s".into(), s.logs()));
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err((format!("the server exited: {status}"), s.logs()));
            }
            let logs = s.logs();
            for scheme in ["http://", "https://"] {
                if let Some(i) = logs.find(&format!("{scheme}127.0.0.1:")) {
                    let rest = &logs[i + scheme.len()..];
                    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':')).unwrap_or(rest.len());
                    s.addr = rest[..end].to_string();
                    s.url = format!("{scheme}{}", s.addr);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if s.url.starts_with("https") {
            return Ok(s);
        }
        while raw(&s.addr, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").0 != 200 {
            if start.elapsed() > Duration::from_secs(120) {
                return Err(("the model did not load within 120 s".into(), s.logs()));
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err((format!("the server exited: {status}"), s.logs()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(s)
    }

    fn logs(&self) -> String {
        let read = |n: &str| std::fs::read(self.dir.path().join(n)).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        format!("{}{}", read("stdout.log"), read("stderr.log"))
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then wait for a graceful exit; returns all output.
    fn stop(mut self) -> String {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let start = Instant::now();
        while self.alive() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.logs()
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        post_json(&format!("{}{path}", self.url), body, None)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post_json(url: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut req = ureq::post(url).timeout(Duration::from_secs(120));
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    match req.send_json(body.clone()) {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

fn get(url: &str, key: Option<&str>) -> (u16, String) {
    let mut req = ureq::get(url).timeout(Duration::from_secs(30));
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    match req.call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// Send raw bytes, return (status, headers, body). Status 0: no response.
fn raw(addr: &str, bytes: &[u8]) -> (u16, String, String) {
    raw_with(addr, bytes, Duration::from_secs(30))
}

fn raw_with(addr: &str, bytes: &[u8], timeout: Duration) -> (u16, String, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new(), String::new());
    };
    s.set_read_timeout(Some(timeout)).unwrap();
    if s.write_all(bytes).is_err() {
        // The server may answer (413) and close before reading everything.
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn http_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let mut b = r.into_bytes();
    b.extend_from_slice(body);
    b
}

fn tiny() -> Option<PathBuf> {
    bedside_testutil::fixture("tiny-llama")
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn tiny_args(dir: &Path) -> Vec<String> {
    vec![
        "--model".into(),
        s(dir),
        "--name".into(),
        "tiny".into(),
        "--adapter".into(),
        format!("lora={}", s(&dir.join("lora"))),
        "--adapter".into(),
        format!("rslora={}", s(&dir.join("rslora"))),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn chat(model: &str, text: &str, extra: Value) -> Value {
    let mut b = json!({"model": model, "messages": [{"role": "user", "content": text}]});
    if let (Some(o), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    b
}

/// Read a streamed chat answer: (text, finish_reason, saw the role first, usage).
fn read_stream(url: &str, body: &Value) -> (String, String, bool, Value) {
    let r = ureq::post(url).timeout(Duration::from_secs(120)).send_json(body.clone()).unwrap();
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let mut text = String::new();
    let mut finish = String::new();
    let mut role_first = false;
    let mut usage = Value::Null;
    let mut n = 0;
    let mut done = false;
    for line in BufReader::new(r.into_reader()).lines() {
        let line = line.unwrap();
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        assert!(!done, "data after [DONE]");
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk", "{v}");
        if let Some(c) = v["choices"].get(0) {
            if n == 0 {
                role_first = c["delta"]["role"] == "assistant";
            }
            if let Some(t) = c["delta"]["content"].as_str() {
                text.push_str(t);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                finish = f.to_string();
            }
        }
        if !v["usage"].is_null() {
            usage = v["usage"].clone();
        }
        n += 1;
    }
    assert!(done, "the stream did not end with [DONE]");
    (text, finish, role_first, usage)
}

/// At least 1,000 malformed or hostile requests; each gets the right status, the server stays
/// up and answers a normal request afterwards.
#[test]
fn hostile_requests_get_the_right_status_and_do_no_harm() {
    let Some(dir) = tiny() else { return };
    let mut args = tiny_args(&dir);
    args.extend(["--body-timeout", "1", "--max-messages", "64", "--max-body-bytes", "262144", "--max-tokens", "100"].map(String::from));
    let mut srv = Server::start(&strs(&args), &[]);
    let addr = srv.addr.clone();
    let path = "/v1/chat/completions";
    let good = serde_json::to_vec(&json!({
        "model": "tiny",
        "messages": [{"role": "system", "content": "You are a caring clinician."}, {"role": "user", "content": "My knee is swollen after a fall. Should I see someone today?"}],
        "max_tokens": 4, "temperature": 0.5, "top_p": 0.9, "stop": ["\n\n", "END"], "seed": 42, "stream": false
    }))
    .unwrap();
    let mut cases: Vec<(String, Vec<u8>, u16)> = Vec::new();
    let json_case = |label: &str, v: &Value, want: u16| {
        (label.to_string(), http_request("POST", path, &[("Content-Type", "application/json")], &serde_json::to_vec(v).unwrap()), want)
    };
    // Truncated JSON at every byte position.
    for cut in 1..good.len() - 1 {
        cases.push((format!("truncated at {cut}"), http_request("POST", path, &[], &good[..cut]), 400));
    }
    // Wrong types for every field.
    let wrong: [Value; 6] = [json!("text"), json!(12), json!(true), json!({"a": 1}), json!([1, 2]), json!(-3.5)];
    let fields = [
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "stop",
        "seed",
        "stream",
        "logprobs",
        "top_logprobs",
        "n",
        "max_completion_tokens",
        "top_k",
        "min_p",
        "repeat_penalty",
        "stream_options",
        "presence_penalty",
    ];
    for f in fields {
        for (i, w) in wrong.iter().enumerate() {
            let mut b = chat("tiny", "hi", json!({}));
            b[f] = w.clone();
            // Values that are in fact valid for a field are not hostile.
            let valid = matches!(
                (f, i),
                ("model", 0)
                    | ("max_tokens", 1)
                    | ("stop", 0)
                    | ("seed", 1)
                    | ("stream", 2)
                    | ("logprobs", 2)
                    | ("max_completion_tokens", 1)
                    | ("top_k", 1)
            );
            if valid {
                continue;
            }
            cases.push(json_case(&format!("{f} = {w}"), &b, 400));
        }
        for m in ["role", "content"] {
            for w in &wrong {
                let mut b = chat("tiny", "hi", json!({}));
                b["messages"][0][m] = w.clone();
                if m == "content" && w.is_string() {
                    continue;
                }
                cases.push(json_case(&format!("messages[0].{m} = {w}"), &b, 400));
            }
        }
    }
    // Out-of-range values.
    for (f, v) in [
        ("max_tokens", json!(-1)),
        ("max_tokens", json!(0)),
        ("max_tokens", json!(-1_000_000_000i64)),
        ("max_tokens", json!(1e30)),
        ("max_tokens", json!(u64::MAX)),
        ("max_tokens", json!(101)),
        ("max_tokens", json!(9_223_372_036_854_775_807i64)),
        ("max_completion_tokens", json!(-5)),
        ("temperature", json!(-0.1)),
        ("temperature", json!(2.5)),
        ("top_p", json!(0)),
        ("top_p", json!(1.5)),
        ("top_logprobs", json!(99)),
        ("n", json!(3)),
        ("n", json!(0)),
        ("min_p", json!(2)),
        ("repeat_penalty", json!(-1)),
        ("stop", json!(["a", "b", "c", "d", "e"])),
        ("logit_bias", json!({"5": 10})),
        ("tools", json!([{"type": "function"}])),
        ("presence_penalty", json!(1.0)),
    ] {
        for _ in 0..3 {
            let mut b = chat("tiny", "hi", json!({}));
            b[f] = v.clone();
            cases.push(json_case(&format!("{f} = {v}"), &b, 400));
        }
    }
    // Unknown models.
    for i in 0..150 {
        cases.push(json_case(&format!("unknown model {i}"), &chat(&format!("gpt-{i}"), "hi", json!({})), 404));
    }
    // Invalid UTF-8 in strings, and a body that is not UTF-8 at all.
    for i in 0..100u8 {
        let mut b = b"{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi ".to_vec();
        b.extend([0xff, 0xc3, 0x28, 0x80 + i % 64]);
        b.extend(b"\"}]}");
        cases.push((format!("invalid utf-8 {i}"), http_request("POST", path, &[], &b), 400));
    }
    // Thousands of messages (over --max-messages), and too deep nesting.
    let many: Vec<Value> = (0..3000).map(|i| json!({"role": if i % 2 == 0 {"user"} else {"assistant"}, "content": "x"})).collect();
    for _ in 0..5 {
        cases.push(json_case("3000 messages", &json!({"model": "tiny", "messages": many}), 400));
    }
    let deep = format!("{{\"model\":\"tiny\",\"messages\":{}{}}}", "[".repeat(5000), "]".repeat(5000));
    cases.push(("5000-deep nesting".into(), http_request("POST", path, &[], deep.as_bytes()), 400));
    // A prompt longer than the context (tiny-llama holds 128 positions).
    for _ in 0..5 {
        cases.push(json_case("prompt beyond the context", &chat("tiny", &"fever ".repeat(400), json!({})), 400));
    }
    // Bodies over the limit: declared, and sent without a length (chunked).
    let big = vec![b'a'; 300_000];
    for _ in 0..10 {
        cases.push(("huge body".into(), http_request("POST", path, &[], &big), 413));
    }
    let mut chunked = format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    for _ in 0..70 {
        chunked.extend(format!("{:x}\r\n", 4096).as_bytes());
        chunked.extend(vec![b' '; 4096]);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    for _ in 0..5 {
        cases.push(("huge chunked body".into(), chunked.clone(), 413));
    }
    // Routes and methods.
    for _ in 0..30 {
        cases.push(("GET on a POST route".into(), http_request("GET", path, &[], b""), 405));
        cases.push(("unknown path".into(), http_request("POST", "/v2/chat", &[], &good), 404));
        cases.push(("path with text".into(), http_request("GET", &format!("/v1/{SENTINEL}"), &[], b""), 404));
        cases.push(("completions without prompt".into(), http_request("POST", "/v1/completions", &[], br#"{"model":"tiny"}"#), 400));
        cases.push((
            "completions with token ids".into(),
            http_request("POST", "/v1/completions", &[], br#"{"model":"tiny","prompt":[1,2,3]}"#),
            400,
        ));
        cases.push(("empty body".into(), http_request("POST", path, &[], b""), 400));
        cases.push(("JSON array".into(), http_request("POST", path, &[], b"[]"), 400));
        cases.push(("JSON null".into(), http_request("POST", path, &[], b"null"), 400));
        cases.push(("trailing garbage".into(), http_request("POST", path, &[], &[good.as_slice(), b" }}"].concat()), 400));
        cases.push(("empty messages".into(), http_request("POST", path, &[], br#"{"model":"tiny","messages":[]}"#), 400));
        cases.push((
            "tool message".into(),
            http_request("POST", path, &[], br#"{"model":"tiny","messages":[{"role":"tool","content":"x"}]}"#),
            400,
        ));
        cases.push((
            "image part".into(),
            http_request(
                "POST",
                path,
                &[],
                br#"{"model":"tiny","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
            ),
            400,
        ));
    }
    assert!(cases.len() >= 1000, "only {} hostile cases", cases.len());
    let start = Instant::now();
    for (label, bytes, want) in &cases {
        let (status, head, body) = raw(&addr, bytes);
        assert_eq!(status, *want, "{label}: got {status}\n{head}\n{body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{label}: error body is not JSON ({e}): {body}"));
        assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string(), "{label}: not an OpenAI error body: {body}");
    }
    let secs = start.elapsed().as_secs_f64();
    // Bodies that never finish: 408 after the body timeout (1 s here), several at once.
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut partial =
                    format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1000\r\n\r\n").into_bytes();
                partial.extend(b"{\"model\":\"tiny\",");
                raw_with(&addr, &partial, Duration::from_secs(20)).0
            })
        })
        .collect();
    for h in slow {
        assert_eq!(h.join().unwrap(), 408, "a body that never finishes");
    }
    assert!(srv.alive(), "the server died");
    let (status, v) = srv.post(path, &chat("tiny", "My knee is swollen after a fall.", json!({"max_tokens": 4})));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    eprintln!("{} hostile requests in {secs:.1} s", cases.len());
}

/// Every route but /health needs a key once a key file is given; 401 bodies are OpenAI's.
#[test]
fn api_keys_guard_every_route_but_health() {
    let Some(dir) = tiny() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    std::fs::write(&keys, "# ward keys\nward-7:sk-ward7-0123456789abcdef\nehr:sk-ehr-fedcba9876543210\n").unwrap();
    let mut args = tiny_args(&dir);
    args.extend(["--api-key-file".into(), s(&keys)]);
    let srv = Server::start(&strs(&args), &[]);
    let u = |p: &str| format!("{}{p}", srv.url);
    let body = chat("lora", "hi", json!({"max_tokens": 2}));
    let comp = json!({"model": "tiny", "prompt": "Fever is", "max_tokens": 2});
    for key in [None, Some("sk-wrong-0000000000000000"), Some("sk-ward7-0123456789abcdeF"), Some("")] {
        for (status, text) in [
            get(&u("/v1/models"), key),
            get(&u("/v1/models/tiny"), key),
            get(&u("/metrics"), key),
            {
                let (c, v) = post_json(&u("/v1/chat/completions"), &body, key);
                (c, v.to_string())
            },
            {
                let (c, v) = post_json(&u("/v1/completions"), &comp, key);
                (c, v.to_string())
            },
        ] {
            assert_eq!(status, 401, "key {key:?}: {text}");
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["error"]["code"], "invalid_api_key");
        }
    }
    for key in ["sk-ward7-0123456789abcdef", "sk-ehr-fedcba9876543210"] {
        assert_eq!(get(&u("/v1/models"), Some(key)).0, 200);
        assert_eq!(get(&u("/metrics"), Some(key)).0, 200);
        assert_eq!(post_json(&u("/v1/chat/completions"), &body, Some(key)).0, 200);
        assert_eq!(post_json(&u("/v1/completions"), &comp, Some(key)).0, 200);
    }
    assert_eq!(get(&u("/health"), None).0, 200);
    let logs = srv.stop();
    // The log names the key's label, never the key.
    assert!(logs.contains("ward-7") && logs.contains("ehr"), "{logs}");
    assert!(!logs.contains("0123456789abcdef") && !logs.contains("fedcba9876543210"), "a key is in the log:\n{logs}");
    // Another address than loopback without keys is refused before anything listens.
    let out = Command::new(env!("CARGO_BIN_EXE_bedside"))
        .args(["serve", "--host", "0.0.0.0", "--port", "0", "--model", &s(&dir)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to listen"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A sentinel sent in every part of requests a client controls never reaches a log, at any
/// verbosity, in text or JSON; the access lines are there.
#[test]
fn logs_never_hold_request_text() {
    let Some(dir) = tiny() else { return };
    type Variant<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let variants: [Variant; 6] = [
        (&[], &[]),
        (&["-v"], &[]),
        (&["-vv"], &[]),
        (&[], &[("RUST_LOG", "trace")]),
        (&["--log-format", "json"], &[]),
        (&["--log-format", "json"], &[("RUST_LOG", "trace")]),
    ];
    for (extra, env) in variants {
        let mut args = tiny_args(&dir);
        args.extend(extra.iter().map(|s| s.to_string()));
        let srv = Server::start(&strs(&args), env);
        let u = |p: &str| format!("{}{p}", srv.url);
        let text = format!("My name is {SENTINEL} and my chest hurts.");
        assert_eq!(srv.post("/v1/chat/completions", &chat("tiny", &text, json!({"max_tokens": 5, "stop": [SENTINEL]}))).0, 200);
        assert_eq!(
            srv.post("/v1/chat/completions", &chat("lora", &text, json!({"max_tokens": 5, "logprobs": true, "top_logprobs": 2}))).0,
            200
        );
        let (_, _, _, _) = read_stream(&u("/v1/chat/completions"), &chat("rslora", &text, json!({"max_tokens": 5, "stream": true})));
        assert_eq!(srv.post("/v1/completions", &json!({"model": "tiny", "prompt": text, "max_tokens": 5})).0, 200);
        assert_eq!(srv.post("/v1/chat/completions", &chat(SENTINEL, &text, json!({}))).0, 404);
        assert_eq!(srv.post("/v1/chat/completions", &chat("tiny", &text.repeat(100), json!({}))).0, 400);
        assert_eq!(srv.post("/v1/chat/completions", &chat("tiny", &text, json!({"max_tokens": SENTINEL}))).0, 400);
        assert_eq!(srv.post("/v1/chat/completions", &json!({"model": "tiny", "messages": [{"role": SENTINEL, "content": text}]})).0, 400);
        let (st, ..) = raw(
            &srv.addr,
            &http_request(
                "POST",
                "/v1/chat/completions",
                &[("x-request-id", SENTINEL), ("User-Agent", SENTINEL)],
                format!("{{\"model\":\"tiny\",\"messages\":[{{\"role\":\"user\",\"content\":\"{SENTINEL}").as_bytes(),
            ),
        );
        assert_eq!(st, 400);
        let (st, ..) = raw(&srv.addr, &http_request("GET", &format!("/v1/models/{SENTINEL}?q={SENTINEL}"), &[], b""));
        assert_eq!(st, 404);
        let logs = srv.stop();
        assert!(
            !logs.contains(SENTINEL),
            "{extra:?} {env:?}: the sentinel is in the log:\n{}",
            logs.lines().filter(|l| l.contains(SENTINEL)).collect::<Vec<_>>().join("\n")
        );
        let access = logs.lines().filter(|l| l.contains("request_id") && l.contains("prompt_tokens") && l.contains("latency_ms")).count();
        assert!(access >= 10, "{extra:?} {env:?}: only {access} access lines:\n{logs}");
        if extra.contains(&"json") {
            for l in logs.lines().filter(|l| l.contains("request_id")) {
                let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
                assert!(v["fields"]["status"].is_u64(), "{l}");
            }
        }
    }
}

/// 16 clients at once, half streaming, over the base model and two adapters, with more
/// clients than rows: every answer equals the answer the same request gets alone.
#[test]
fn sixteen_concurrent_clients_with_mixed_adapters() {
    let Some(dir) = tiny() else { return };
    let mut args = tiny_args(&dir);
    args.extend(["--parallel", "6"].map(String::from));
    let srv = Server::start(&strs(&args), &[]);
    let url = format!("{}/v1/chat/completions", srv.url);
    let models = ["tiny", "lora", "rslora"];
    let prompts = [
        "I get dizzy when I stand up.",
        "My child has a rash and a fever of 39.",
        "Can I drink alcohol with metformin?",
        "I'm anxious about my biopsy results tomorrow and can't stop shaking.",
    ];
    let bodies: Vec<Value> = (0..16)
        .map(|i| {
            let sampling = if i % 4 == 3 { json!({"temperature": 0.8, "seed": 1000 + i}) } else { json!({"temperature": 0}) };
            let mut b = chat(models[i % 3], prompts[i % 4], json!({"max_tokens": 8 + 5 * (i % 5)}));
            b.as_object_mut().unwrap().extend(sampling.as_object().unwrap().clone());
            b
        })
        .collect();
    let alone: Vec<String> = bodies
        .iter()
        .map(|b| {
            let (st, v) = post_json(&url, b, None);
            assert_eq!(st, 200, "{v}");
            v["choices"][0]["message"]["content"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(alone[0] != alone[1] || alone[0] != alone[2], "adapters do not change the answers");
    let handles: Vec<_> = bodies
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, b)| {
            let url = url.clone();
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    let mut b = b;
                    b["stream"] = json!(true);
                    b["stream_options"] = json!({"include_usage": true});
                    let (text, finish, role_first, usage) = read_stream(&url, &b);
                    assert!(role_first, "client {i}: the first chunk is not the role");
                    assert!(finish == "stop" || finish == "length", "client {i}: finish {finish}");
                    assert!(usage["completion_tokens"].as_u64().unwrap() >= 1, "client {i}: {usage}");
                    text
                } else {
                    let (st, v) = post_json(&url, &b, None);
                    assert_eq!(st, 200, "client {i}: {v}");
                    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > v["usage"]["prompt_tokens"].as_u64().unwrap());
                    v["choices"][0]["message"]["content"].as_str().unwrap().to_string()
                }
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let got = h.join().unwrap();
        assert_eq!(got, alone[i], "client {i} ({}) answered differently in company", bodies[i]["model"]);
    }
    // A request is counted when its last byte is sent, which may follow the client's read.
    let start = Instant::now();
    loop {
        let (_, m) = get(&format!("{}/metrics", srv.url), None);
        let done = m.contains("bedside_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 32");
        if done {
            assert!(m.contains("bedside_time_to_first_token_seconds_count 32"), "{m}");
            assert!(m.contains("bedside_active_requests 0") && m.contains("bedside_queue_depth 0"), "{m}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The queue holds `--queue` requests beyond `--parallel`; more get 429 with Retry-After.
/// A client that disconnects stops its generation; a request past `--timeout` gets 504.
#[test]
fn queue_limit_disconnect_and_timeout() {
    let Some(model) = bedside_testutil::smollm2_gguf() else {
        return;
    };
    let mut srv = Server::start(&["--model", &s(&model), "--parallel", "1", "--queue", "1", "--timeout", "4"], &[]);
    let url = format!("{}/v1/chat/completions", srv.url);
    let long = chat("SmolLM2-135M-Instruct.Q4_1", "Write a long story about a hospital.", json!({"max_tokens": 2000, "temperature": 0}));
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let (url, b) = (url.clone(), long.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300 * i));
                match ureq::post(&url).timeout(Duration::from_secs(60)).send_json(b) {
                    Ok(r) => (r.status(), None),
                    Err(ureq::Error::Status(c, r)) => (c, r.header("retry-after").map(String::from)),
                    Err(e) => panic!("{e}"),
                }
            })
        })
        .collect();
    let mut statuses: Vec<(u16, Option<String>)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    statuses.sort();
    // The first runs into the 4 s timeout (504), the second waits then times out too (504: its
    // deadline counts from arrival), the third finds the queue full.
    assert_eq!(statuses.iter().filter(|(c, _)| *c == 429).count(), 1, "{statuses:?}");
    assert!(statuses.iter().any(|(c, r)| *c == 429 && r.is_some()), "429 without Retry-After: {statuses:?}");
    assert!(statuses.iter().filter(|(c, _)| *c == 504).count() == 2, "{statuses:?}");
    // Disconnect: start a long stream, read one chunk, hang up; the row must leave the batch at
    // once, long before 2000 tokens.
    let mut b = long.clone();
    b["stream"] = json!(true);
    let r = ureq::post(&url).timeout(Duration::from_secs(60)).send_json(b.clone()).unwrap();
    let mut reader = BufReader::new(r.into_reader());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("data: "), "{line}");
    drop(reader);
    let metrics = format!("{}/metrics", srv.url);
    let start = Instant::now();
    loop {
        let (_, m) = get(&metrics, None);
        if m.contains("bedside_active_requests 0") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "the disconnected client's generation is still running:\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Hang up with unread answer bytes (the kernel then resets the connection) while the server
    // keeps writing: its later writes fail with EPIPE, which must not end it (SIGPIPE ignored).
    let body = serde_json::to_vec(&b).unwrap();
    for _ in 0..3 {
        let mut c = TcpStream::connect(&srv.addr).unwrap();
        let req = http_request("POST", "/v1/chat/completions", &[("Content-Type", "application/json")], &body);
        c.write_all(&req).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut first = [0u8; 64];
        let n = c.read(&mut first).unwrap();
        assert!(n > 0);
        std::thread::sleep(Duration::from_millis(300));
        drop(c);
        std::thread::sleep(Duration::from_millis(300));
        assert!(srv.alive(), "a client's disconnect ended the server:\n{}", srv.logs());
    }
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string(format!("/proc/{}/status", srv.child.id())).unwrap();
        let ignored = status.lines().find_map(|l| l.strip_prefix("SigIgn:")).and_then(|h| u64::from_str_radix(h.trim(), 16).ok()).unwrap();
        assert!(ignored & (1 << (13 - 1)) != 0, "SIGPIPE is not ignored: {status}");
    }
    assert_eq!(get(&format!("{}/health", srv.url), None).0, 200);
}

/// HTTPS with a certificate the test makes; plain HTTP to the same port gets no answer.
#[test]
fn tls_serves_https() {
    let Some(dir) = tiny() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_pem, key_pem) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.key_pair.serialize_pem()).unwrap();
    let mut args = tiny_args(&dir);
    args.extend(["--tls-cert".into(), s(&cert_pem), "--tls-key".into(), s(&key_pem)]);
    let srv = Server::start(&strs(&args), &[]);
    assert!(srv.url.starts_with("https://"), "{}", srv.url);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let agent = ureq::AgentBuilder::new().tls_config(std::sync::Arc::new(config)).build();
    let start = Instant::now();
    let health = loop {
        match agent.get(&format!("https://localhost:{}/health", srv.addr.rsplit(':').next().unwrap())).call() {
            Ok(r) => break r.status(),
            Err(ureq::Error::Status(503, _)) if start.elapsed() < Duration::from_secs(60) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(health, 200);
    let r = agent
        .post(&format!("https://localhost:{}/v1/chat/completions", srv.addr.rsplit(':').next().unwrap()))
        .send_json(chat("lora", "hello", json!({"max_tokens": 3})))
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, ..) = raw_with(&srv.addr, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", Duration::from_secs(5));
    assert_ne!(status, 200, "plain HTTP answered on the TLS port");
}

/// The official `openai` Python client: models, chat, streaming, completions, adapter choice,
/// and greedy answers equal to `bedside generate`'s.
#[test]
fn openai_python_client() {
    let Some(dir) = tiny() else { return };
    let Some(smol) = bedside_testutil::smollm2_gguf() else {
        return;
    };
    let ok = Command::new("python3").args(["-c", "import openai"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("BEDSIDE_REQUIRE_PYREF").as_deref() != Ok("1"),
            "BEDSIDE_REQUIRE_PYREF=1 but python3 lacks openai (pip install -r scripts/reference-requirements.txt)"
        );
        eprintln!("skipping: python3 has no openai package");
        return;
    }
    let generate = |model: &str, adapter: Option<&Path>, text: &str, max: &str| -> String {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bedside"));
        c.args(["generate", "--model", model, "--user", text, "--temperature", "0", "--max-tokens", max, "--json"])
            .env_remove("BEDSIDE_MODEL");
        if let Some(a) = adapter {
            c.args(["--adapter", &s(a)]);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["text"].as_str().unwrap().to_string()
    };
    let question = "I have had a cough for three weeks. Should I worry?";
    let want_smol = generate(&s(&smol), None, question, "24");
    let want_tiny = generate(&s(&dir), None, question, "16");
    let want_lora = generate(&s(&dir), Some(&dir.join("lora")), question, "16");
    assert_ne!(want_tiny, want_lora);
    let smol_srv = Server::start(&["--model", &s(&smol), "--name", "smollm2"], &[]);
    let tiny_srv = Server::start(&strs(&tiny_args(&dir)), &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve_openai.py");
    let out = Command::new("python3")
        .arg(&script)
        .env("SMOL_URL", format!("{}/v1", smol_srv.url))
        .env("TINY_URL", format!("{}/v1", tiny_srv.url))
        .env("QUESTION", question)
        .env("WANT_SMOL", &want_smol)
        .env("WANT_TINY", &want_tiny)
        .env("WANT_LORA", &want_lora)
        .output()
        .unwrap();
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "openai client checks failed:\n{so}\n{se}\n--- server ---\n{}", tiny_srv.logs());
    assert!(so.contains("passed"), "{so}");
}

/// `kv_cache = "f16"` (here `--kv-cache f16`) reaches the engine: the server says so when ready,
/// answers greedily what `bedside generate --kv-cache f16` answers, and answers the same in
/// company (rows joining and leaving a batch whose cache is f16) as alone.
#[test]
fn f16_cache_answers_as_generate_does_alone_and_in_company() {
    let Some(model) = tiny() else { return };
    let questions = [
        "My ankle is swollen after a fall.",
        "I keep waking up at 3 am and cannot sleep again.",
        "Is it safe to take ibuprofen every day?",
    ];
    let maxes = [20u64, 12, 28];
    let generate = |text: &str, max: u64| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_bedside"))
            .args(["generate", "--model", &s(&model), "--user", text, "--temperature", "0", "--kv-cache", "f16", "--json"])
            .args(["--max-tokens", &max.to_string()])
            .env_remove("BEDSIDE_MODEL")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["text"].as_str().unwrap().to_string()
    };
    let want: Vec<String> = questions.iter().zip(maxes).map(|(q, m)| generate(q, m)).collect();
    let srv = Server::start(&["--model", &s(&model), "--name", "tiny", "--parallel", "3", "--kv-cache", "f16"], &[]);
    let ready = srv.logs();
    assert!(ready.contains("kv_cache=F16"), "the ready line does not name the f16 cache:\n{ready}");
    let url = format!("{}/v1/chat/completions", srv.url);
    let body = |i: usize| chat("tiny", questions[i], json!({"temperature": 0, "max_tokens": maxes[i]}));
    for (i, w) in want.iter().enumerate() {
        let (st, v) = post_json(&url, &body(i), None);
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["choices"][0]["message"]["content"].as_str().unwrap(), w, "question {i} alone");
    }
    // Twice over, so rows finish at different steps while others still decode.
    let handles: Vec<_> = (0..6)
        .map(|k| {
            let (url, b) = (url.clone(), body(k % 3));
            std::thread::spawn(move || {
                let (st, v) = post_json(&url, &b, None);
                assert_eq!(st, 200, "{v}");
                v["choices"][0]["message"]["content"].as_str().unwrap().to_string()
            })
        })
        .collect();
    for (k, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), want[k % 3], "question {} in company", k % 3);
    }
}

/// `eval run` with a system that is `bedside serve` on loopback. The server runs one request at
/// a time and the local system batches one prompt at a time, so both compute exactly the same
/// thing: the endpoint system must get the local base system's answers, word for word, with the
/// same sampling settings and per-item seeds (temperature 0.7, top-k, min-p, repeat penalty).
#[test]
fn eval_run_scores_an_endpoint_system() {
    let Some(model) = bedside_testutil::smollm2_gguf() else {
        return;
    };
    if bedside_testutil::model_file("all-minilm-l6-v2/model.safetensors").is_none() || !bedside_empathy::default_heads_path().is_file() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    std::fs::write(&keys, "eval:sk-eval-0123456789abcdef\n").unwrap();
    let srv = Server::start(&["--model", &s(&model), "--name", "smollm2", "--parallel", "1", "--api-key-file", &s(&keys)], &[]);
    let q = |p: &Path| p.display().to_string().replace('\\', "/");
    let cfg = format!(
        r#"
name = "endpoint"
model = "{model}"
device = "cpu"
system_prompt = "You are a caring, knowledgeable clinician."
batch_size = 1

[[systems]]
name = "base"

[[systems]]
name = "served"
endpoint = "{url}/v1"
model = "smollm2"
api_key_env = "BEDSIDE_TEST_EVAL_KEY"
concurrency = 2

[decoding]
temperature = 0.7
top_k = 40
top_p = 0.95
min_p = 0.05
repeat_penalty = 1.1
max_tokens = 16
seed = 5

[sets.test]
paths = ["{root}/data/dialogues"]
limit = 2

[sets.safety]
path = "{root}/data/eval/safety.jsonl"
limit = 1

[sets.equity]
path = "{root}/data/eval/equity-probes.jsonl"
limit = 1

[stats]
bootstrap = 200

[equity]
permutations = 200
"#,
        model = q(&model),
        url = srv.url,
        root = q(&root),
    );
    let cfg_path = tmp.path().join("eval.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let run = tmp.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_bedside"))
        .args(["eval", "run", "--config", &s(&cfg_path), "--output-dir", &s(&run), "--quiet"])
        .env("BEDSIDE_TEST_EVAL_KEY", "sk-eval-0123456789abcdef")
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n--- server ---\n{}", String::from_utf8_lossy(&out.stderr), srv.logs());
    let gens: Vec<Value> =
        std::fs::read_to_string(run.join("generations.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |sys: &str| -> std::collections::BTreeMap<String, String> {
        gens.iter()
            .filter(|g| g["system"] == sys)
            .map(|g| (g["key"].as_str().unwrap().to_string(), g["text"].as_str().unwrap().to_string()))
            .collect()
    };
    let (base, served) = (of("base"), of("served"));
    assert_eq!(base.len(), 2 + 1 + 9, "{base:?}");
    assert_eq!(served, base, "the endpoint system's answers differ from the local system's");
    let results: Value = serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    assert!(results.to_string().contains("\"served\""));
    let logs = srv.stop();
    let answered = logs.lines().filter(|l| l.contains("/v1/chat/completions") && l.contains("eval") && l.contains("200")).count();
    assert_eq!(answered, 12, "one access line per answer, with the key's label:\n{logs}");
}
