//! A fault-injecting HTTP/1.1 proxy in front of a real S3 endpoint, for
//! the S3 retry tests (tests/s3faults): every request is forwarded byte
//! for byte, except those a scripted [`FaultRule`] picks, which get a
//! [`Fault`] instead of (or on top of) the server's answer.
//!
//! coffer signs presigned URLs whose signature covers the `Host` header;
//! the proxy rewrites nothing, so the server sees the host the client
//! signed (`127.0.0.1:PROXYPORT`). SeaweedFS checks the signature against
//! the `Host` it receives, so a transparent proxy passes.
//!
//! Each forwarded request gets its own upstream connection: an idle
//! pooled upstream connection the server closed would otherwise become a
//! failure the tests did not script. Client connections stay open
//! (keep-alive) until a fault closes them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to a request a rule picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Not forwarded; answered 500 Internal Error.
    InternalError,
    /// Not forwarded; answered 503 with an S3 `SlowDown` error body.
    SlowDown,
    /// Not forwarded; answered 403 with an S3 `AccessDenied` error body.
    Denied,
    /// Forwarded; the client gets the answer's head and half its body,
    /// then the end of the stream (FIN): a body shorter than its
    /// Content-Length, which only the length reveals.
    CutBody,
    /// As [`Fault::CutBody`], but the connection is reset (RST).
    ResetBody,
    /// Forwarded; the client gets the head and half the body, then
    /// nothing for this long (past the client's timeout between reads),
    /// then the end of the stream.
    StallBody(Duration),
    /// Forwarded; the answer is held this long (past the client's
    /// timeout), then sent to whoever still listens, and the connection
    /// closes.
    Hold(Duration),
    /// Forwarded (a put lands); the connection closes without an answer.
    LoseAnswer,
}

/// "The `nth` request with `method` under `under` (a path inside the
/// repository, e.g. `packs/`) gets `fault`", or every request alike.
#[derive(Clone, Debug)]
pub struct FaultRule {
    method: Option<&'static str>,
    under: Option<String>,
    nth: Option<usize>,
    fault: Fault,
    seen: usize,
}

impl FaultRule {
    /// The `nth` (from 1) `method` request for an object under `under`.
    pub fn nth(method: &'static str, under: &str, nth: usize, fault: Fault) -> FaultRule {
        FaultRule {
            method: Some(method),
            under: Some(under.to_string()),
            nth: Some(nth),
            fault,
            seen: 0,
        }
    }

    /// Every `method` request for an object under `under`.
    pub fn all(method: &'static str, under: &str, fault: Fault) -> FaultRule {
        FaultRule {
            nth: None,
            ..FaultRule::nth(method, under, 1, fault)
        }
    }

    /// Every request, listings included.
    pub fn every(fault: Fault) -> FaultRule {
        FaultRule {
            method: None,
            under: None,
            nth: None,
            fault,
            seen: 0,
        }
    }

    /// Does this rule pick the request? A fault on the server's answer
    /// is decided once it is known (`status`), and only a success
    /// counts: a read cut short is one that had something to read, a put
    /// whose answer is lost one that landed.
    fn pick(&mut self, method: &str, object: Option<&str>, status: Option<u16>) -> Option<Fault> {
        match status {
            None if self.fault.on_answer() => return None,
            Some(_) if !self.fault.on_answer() => return None,
            Some(s) if !(200..300).contains(&s) => return None,
            _ => {}
        }
        if self.method.is_some_and(|m| m != method) {
            return None;
        }
        if let Some(under) = &self.under
            && !object.is_some_and(|o| o.starts_with(under.as_str()))
        {
            return None;
        }
        self.seen += 1;
        match self.nth {
            Some(n) if n != self.seen => None,
            _ => Some(self.fault),
        }
    }
}

impl Fault {
    /// Is the request forwarded, and the server's answer spoiled?
    fn on_answer(self) -> bool {
        !matches!(self, Fault::InternalError | Fault::SlowDown | Fault::Denied)
    }
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// The object's path inside the repository (`packs/ab/ab…`), or the
    /// request target when it names none (a listing).
    pub object: String,
    pub fault: Option<Fault>,
    /// The server's status, when the request was forwarded and answered.
    pub upstream: Option<u16>,
}

struct Shared {
    rules: Vec<FaultRule>,
    seen: Vec<Seen>,
}

/// A running proxy; its threads live as long as the test binary.
pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Mutex<Shared>>,
}

impl FaultProxy {
    /// Listen on a free loopback port, forwarding to `upstream`
    /// (`HOST:PORT`); `repo_path` (`/BUCKET/PREFIX/`) is what rules'
    /// `under` paths are relative to.
    pub fn start(upstream: &str, repo_path: &str, rules: Vec<FaultRule>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Mutex::new(Shared {
            rules,
            seen: Vec::new(),
        }));
        let (upstream, repo_path, s) = (
            upstream.to_string(),
            repo_path.to_string(),
            Arc::clone(&shared),
        );
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, repo_path, s) = (upstream.clone(), repo_path.clone(), s.clone());
                std::thread::spawn(move || serve(client, &upstream, &repo_path, &s));
            }
        });
        FaultProxy { port, shared }
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().expect("proxy state").seen.clone()
    }

    /// The requests a fault was injected into.
    pub fn faulted(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.fault.is_some())
            .collect()
    }

    /// How many puts the server accepted (2xx) under each object name.
    pub fn stored(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for s in self.seen() {
            if s.method == "PUT" && s.upstream.is_some_and(|c| (200..300).contains(&c)) {
                *out.entry(s.object).or_insert(0) += 1;
            }
        }
        out
    }

    /// Objects the server accepted a single-object DELETE for (the probe
    /// `init` writes and removes, a lock).
    pub fn deleted(&self) -> std::collections::BTreeSet<String> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "DELETE" && s.upstream.is_some_and(|c| (200..300).contains(&c)))
            .map(|s| s.object)
            .collect()
    }
}

/// An HTTP message as it travelled: start line and headers (with the
/// blank line), then the body bytes exactly as sent (chunked stays chunked).
struct Message {
    head: Vec<u8>,
    body: Vec<u8>,
    close: bool,
}

impl Message {
    fn start_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.head);
        text.lines().next().unwrap_or_default().to_string()
    }
}

fn serve(client: TcpStream, upstream: &str, repo_path: &str, shared: &Mutex<Shared>) {
    let Ok(read_half) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = client;
    while let Ok(Some(req)) = read_message(&mut reader, false, false) {
        let (method, object, index) = note(&req, repo_path, shared);
        let fault =
            shared
                .lock()
                .expect("proxy state")
                .pick(&method, object.as_deref(), None, index);
        if let Some(canned) = fault.and_then(canned_answer) {
            let _ = writer.write_all(&canned);
            break;
        }
        let Some(resp) = forward(upstream, &req, method == "HEAD") else {
            let _ = writer.write_all(&canned_answer(Fault::InternalError).unwrap_or_default());
            break;
        };
        let status = resp
            .start_line()
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok());
        let fault = {
            let mut s = shared.lock().expect("proxy state");
            s.seen[index].upstream = status;
            status.and_then(|c| s.pick(&method, object.as_deref(), Some(c), index))
        };
        match fault {
            Some(Fault::ResetBody) => {
                cut_short(&mut writer, &resp);
                // Dropped with a zero linger: the close sends RST, no FIN.
                reset(&writer);
                return;
            }
            Some(f) => {
                deliver_faulty(&mut writer, f, &resp);
                break;
            }
            None => {
                let sent = writer
                    .write_all(&resp.head)
                    .and_then(|()| writer.write_all(&resp.body));
                if sent.is_err() || resp.close || req.close {
                    break;
                }
            }
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// Record a request: (method, its object if it names one, index in
/// `seen`).
fn note(req: &Message, repo_path: &str, shared: &Mutex<Shared>) -> (String, Option<String>, usize) {
    let line = req.start_line();
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let path = target.split('?').next().unwrap_or_default();
    let object = path
        .strip_prefix(repo_path)
        .map(str::to_string)
        .or_else(|| listing(&target, repo_path))
        .or_else(|| batch_delete(&method, &target));
    let mut s = shared.lock().expect("proxy state");
    s.seen.push(Seen {
        method: method.clone(),
        object: object.clone().unwrap_or(target),
        fault: None,
        upstream: None,
    });
    (method, object, s.seen.len() - 1)
}

impl Shared {
    /// The fault the first rule that picks the request gives it, noted
    /// on its entry in `seen`.
    fn pick(
        &mut self,
        method: &str,
        object: Option<&str>,
        status: Option<u16>,
        index: usize,
    ) -> Option<Fault> {
        let fault = self
            .rules
            .iter_mut()
            .find_map(|r| r.pick(method, object, status));
        if fault.is_some() {
            self.seen[index].fault = fault;
        }
        fault
    }
}

/// The server's answer spoiled by a forwarded fault; the caller closes
/// the connection after it.
fn deliver_faulty(writer: &mut TcpStream, fault: Fault, resp: &Message) {
    match fault {
        Fault::CutBody => cut_short(writer, resp),
        Fault::StallBody(d) => {
            cut_short(writer, resp);
            std::thread::sleep(d);
        }
        Fault::Hold(d) => {
            std::thread::sleep(d);
            let _ = writer.write_all(&resp.head);
            let _ = writer.write_all(&resp.body);
        }
        // LoseAnswer: nothing at all.
        _ => {}
    }
}

/// The answer's head and the first half of its body.
fn cut_short(writer: &mut TcpStream, resp: &Message) {
    let _ = writer.write_all(&resp.head);
    let _ = writer.write_all(&resp.body[..resp.body.len() / 2]);
    let _ = writer.flush();
}

/// `list:DIR/` for a listing of `DIR/` inside the repository (`/BUCKET/`
/// and the `prefix` parameter, percent-decoded), so rules can pick
/// listings too.
fn listing(target: &str, repo_path: &str) -> Option<String> {
    let (bucket, query) = target.split_once('?')?;
    let raw = query.split('&').find_map(|p| p.strip_prefix("prefix="))?;
    let full = format!("{bucket}{}", percent_decode(raw));
    let inside = full.strip_prefix(repo_path)?;
    Some(format!("list:{inside}"))
}

/// `delete:` for a DeleteObjects request (`POST /BUCKET/?delete`): the
/// keys are in its body, so rules pick it as a whole.
fn batch_delete(method: &str, target: &str) -> Option<String> {
    let (_, query) = target.split_once('?')?;
    (method == "POST"
        && query
            .split('&')
            .any(|p| p.split('=').next() == Some("delete")))
    .then(|| "delete:".to_string())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Close with a reset (RST) instead of an orderly end: SO_LINGER of 0,
/// which std offers only on nightly.
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a correctly sized option value; the
    // descriptor stays open (owned by `stream`) during the call.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// The answer a fault that is never forwarded gets.
fn canned_answer(fault: Fault) -> Option<Vec<u8>> {
    let (status, body) = match fault {
        Fault::InternalError => ("500 Internal Server Error", String::new()),
        Fault::SlowDown => (
            "503 Service Unavailable",
            s3_error("SlowDown", "Please reduce your request rate."),
        ),
        Fault::Denied => ("403 Forbidden", s3_error("AccessDenied", "Access Denied")),
        _ => return None,
    };
    Some(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

fn s3_error(code: &str, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>faultproxy</RequestId></Error>"
    )
}

/// Send `req` on a fresh connection and read the whole answer.
fn forward(upstream: &str, req: &Message, head_only: bool) -> Option<Message> {
    let mut conn = TcpStream::connect(upstream).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    conn.write_all(&req.head).ok()?;
    conn.write_all(&req.body).ok()?;
    let mut reader = BufReader::new(conn);
    read_message(&mut reader, true, head_only).ok()?
}

/// One message from `r`: `None` at a clean end of stream before it.
/// A response has no body when it answers a HEAD (`to_head`) or is a
/// 1xx, 204 or 304, whatever its Content-Length says.
fn read_message(
    r: &mut impl BufRead,
    response: bool,
    to_head: bool,
) -> std::io::Result<Option<Message>> {
    let mut head = Vec::new();
    let (mut length, mut chunked, mut close) = (None, false, false);
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        head.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if text.is_empty() {
            break;
        }
        if let Some((name, value)) = text.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    let status = String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    let bodiless = response && (to_head || status.is_some_and(|s| s < 200 || s == 204 || s == 304));
    let mut body = Vec::new();
    match (bodiless, chunked, length) {
        (true, _, _) => {}
        (false, true, _) => read_chunked(r, &mut body)?,
        (false, false, Some(n)) => {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        // A request without a length has no body; a response runs to
        // the end of the stream.
        (false, false, None) if response => {
            r.read_to_end(&mut body)?;
            close = true;
        }
        (false, false, None) => {}
    }
    Ok(Some(Message { head, body, close }))
}

/// A chunked body, raw: size lines, data, the last chunk and trailers.
fn read_chunked(r: &mut impl BufRead, body: &mut Vec<u8>) -> std::io::Result<()> {
    loop {
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line)?;
        body.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line);
        let size = text.trim().split(';').next().unwrap_or_default();
        let n = usize::from_str_radix(size, 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size {size:?}")))?;
        if n == 0 {
            loop {
                let mut t = Vec::new();
                r.read_until(b'\n', &mut t)?;
                body.extend_from_slice(&t);
                if t.is_empty() || t == b"\r\n" || t == b"\n" {
                    return Ok(());
                }
            }
        }
        let start = body.len();
        body.resize(start + n + 2, 0);
        r.read_exact(&mut body[start..])?;
    }
}

/// The S3 location the fault tests use (`COFFER_TEST_S3`, e.g.
/// `http://127.0.0.1:8333/coffer`), split for the proxy and the listing.
pub struct FaultTarget {
    /// `http://HOST:PORT`.
    pub endpoint: String,
    /// `HOST:PORT`, where the proxy forwards to.
    pub host_port: String,
    pub bucket: String,
    /// A prefix no other test or run uses, without slashes at either end.
    pub prefix: String,
}

impl FaultTarget {
    /// The target under a fresh prefix for `test`, or `None` after saying
    /// the test is skipped. With `COFFER_REQUIRE_S3` set a missing
    /// variable is a failure, so CI cannot pass by skipping.
    pub fn from_env_or_skip(test: &str) -> Option<FaultTarget> {
        let Some(url) = std::env::var("COFFER_TEST_S3")
            .ok()
            .filter(|v| !v.is_empty())
        else {
            if std::env::var_os("COFFER_REQUIRE_S3").is_some_and(|v| !v.is_empty() && v != "0") {
                panic!("{test}: COFFER_REQUIRE_S3 is set but COFFER_TEST_S3 is not");
            }
            println!(
                "skipped: COFFER_TEST_S3 not set ({test}; set COFFER_REQUIRE_S3=1 to make this a failure)"
            );
            return None;
        };
        let rest = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("COFFER_TEST_S3={url}: give http://HOST:PORT/BUCKET"));
        let (host_port, path) = rest
            .split_once('/')
            .unwrap_or_else(|| panic!("COFFER_TEST_S3={url}: no bucket after the host"));
        let path = path.trim_matches('/');
        let (bucket, base) = path.split_once('/').unwrap_or((path, ""));
        let unique = format!(
            "s3faults/{test}/{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos()
        );
        let prefix = if base.is_empty() {
            unique
        } else {
            format!("{}/{unique}", base.trim_matches('/'))
        };
        Some(FaultTarget {
            endpoint: format!("http://{host_port}"),
            host_port: host_port.to_string(),
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// `--repo` straight to the server.
    pub fn direct_repo(&self) -> String {
        format!("s3:{}/{}/{}", self.endpoint, self.bucket, self.prefix)
    }

    /// `--repo` through `proxy`.
    pub fn proxied_repo(&self, proxy: &FaultProxy) -> String {
        format!(
            "s3:http://127.0.0.1:{}/{}/{}",
            proxy.port, self.bucket, self.prefix
        )
    }

    /// A proxy in front of the server whose rules see paths inside the
    /// repository.
    pub fn proxy(&self, rules: Vec<FaultRule>) -> FaultProxy {
        FaultProxy::start(
            &self.host_port,
            &format!("/{}/{}/", self.bucket, self.prefix),
            rules,
        )
    }

    fn signer(&self) -> (rusty_s3::Bucket, rusty_s3::Credentials) {
        let var = |n: &str| std::env::var(n).unwrap_or_else(|_| panic!("{n} is not set"));
        let creds =
            rusty_s3::Credentials::new(var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"));
        let bucket = rusty_s3::Bucket::new(
            self.endpoint.parse().expect("endpoint URL"),
            rusty_s3::UrlStyle::Path,
            self.bucket.clone(),
            "us-east-1",
        )
        .expect("bucket");
        (bucket, creds)
    }

    /// Delete every object under the prefix: a passed test's leftovers
    /// (a failed one keeps them for a look).
    pub fn remove_all(&self) {
        use rusty_s3::S3Action;
        let (bucket, creds) = self.signer();
        for name in self.objects().into_keys() {
            let key = format!("{}/{name}", self.prefix);
            let url = rusty_s3::actions::DeleteObject::new(&bucket, Some(&creds), &key)
                .sign(Duration::from_secs(600));
            ureq::delete(url.as_str())
                .call()
                .expect("delete a test object");
        }
    }

    /// Every object under the prefix (path inside it, size), listed
    /// straight from the server.
    pub fn objects(&self) -> BTreeMap<String, u64> {
        use rusty_s3::S3Action;
        use rusty_s3::actions::ListObjectsV2;
        let (bucket, creds) = self.signer();
        let dir = format!("{}/", self.prefix);
        let mut out = BTreeMap::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = ListObjectsV2::new(&bucket, Some(&creds));
            action.with_prefix(dir.as_str());
            if let Some(t) = &token {
                action.with_continuation_token(t.as_str());
            }
            let url = action.sign(Duration::from_secs(600));
            let body = ureq::get(url.as_str())
                .call()
                .expect("list the bucket")
                .body_mut()
                .read_to_string()
                .expect("listing body");
            let page = ListObjectsV2::parse_response(&body).expect("listing parses");
            for c in page.contents {
                let name = c.key.strip_prefix(&dir).unwrap_or(&c.key).to_string();
                out.insert(name, c.size.unwrap_or(0));
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return out,
            }
        }
    }
}
