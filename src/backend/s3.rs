//! A repository in an S3-compatible bucket (AWS S3, SeaweedFS, Garage,
//! MinIO, Ceph): the same object layout as a local repository under the
//! location's prefix (`config`, `keys/ID`, `packs/AB/ID`, …), so a
//! repository copied with any S3 tool stays a repository.
//!
//! Synchronous HTTP (ureq) signed by rusty-s3: the upload, restore and
//! verify threads call it directly, each request on a pooled connection.
//! Every answer is classified here ([`Failure`]) and retried one layer up
//! ([`super::retry`]), where the ambiguity of a put whose answer was lost
//! is resolved.
//!
//! Requests a local disk did not mind cost here (S3-NOTES: restic#1000,
//! kopia#2542): a put is one PUT carrying `Content-MD5` (Object Lock
//! buckets refuse puts without one, restic#2202) and `If-None-Match: *`
//! (create-once where the store honours it, SeaweedFS and AWS do; where it
//! does not, as on Garage, a config is looked for first and locks stay
//! correct through the lock protocol's write-then-list); a ranged read is
//! one GET that must answer 206 with exactly the bytes asked for.

use super::options::Options;
use super::{Backend, FileKind, ObjectInfo, S3Location, valid_name};
use crate::error::{Error, Failure, Result};
use base64::Engine;
use md5::{Digest, Md5};
use rusty_s3::actions::{
    DeleteObject, DeleteObjects, GetObject, HeadObject, ListObjectsV2, ObjectIdentifier, PutObject,
};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use ureq::http::{Response, StatusCode};

/// How long a signed URL stays valid: one request, retries re-sign.
const SIGN_FOR: Duration = Duration::from_secs(15 * 60);
/// The most keys one DeleteObjects request may name.
const DELETE_BATCH: usize = 1000;
/// Error bodies are read only this far: an XML error is small.
const ERROR_BODY_MAX: u64 = 64 << 10;
/// A listing page is small too (1000 keys of at most ~200 bytes of XML).
const LIST_PAGE_MAX: u64 = 16 << 20;

/// Requests sent, by kind: what `-v` reports at the end of a command, so
/// a user can see what a run costs on a store that bills per request.
#[derive(Default)]
struct Counts {
    get: AtomicU64,
    put: AtomicU64,
    head: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
    /// Bytes of object data sent (puts) and received (gets).
    sent: AtomicU64,
    received: AtomicU64,
}

impl Counts {
    /// Count a request about to be sent, and print it under `-vv` (`what`
    /// is only formatted then: this runs for every ranged read).
    fn request(&self, counter: &AtomicU64, method: &str, what: impl FnOnce() -> String) {
        counter.fetch_add(1, Ordering::Relaxed);
        if TRACE.load(Ordering::Relaxed) {
            eprintln!("coffer: S3 {method} {}", what());
        }
    }

    fn snapshot(&self) -> super::Requests {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        super::Requests {
            get: n(&self.get),
            put: n(&self.put),
            head: n(&self.head),
            list: n(&self.list),
            delete: n(&self.delete),
            sent: n(&self.sent),
            received: n(&self.received),
        }
    }
}

static TRACE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Print every request sent (the CLI's `-vv`): what a run costs, request
/// by request.
pub fn set_trace(on: bool) {
    TRACE.store(on, Ordering::Relaxed);
}

pub(crate) struct S3Backend {
    counts: Counts,
    bucket: Bucket,
    creds: Credentials,
    /// `""` or `PREFIX/`.
    prefix: String,
    agent: ureq::Agent,
    location: String,
    connections: usize,
}

/// Where the credentials come from, for the error that names them.
const CREDENTIAL_VARS: &str = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY";

impl S3Backend {
    /// A backend on `loc`; no request is made yet.
    pub fn open(loc: &S3Location, o: &Options) -> Result<S3Backend> {
        let location = loc.to_string();
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        let (Some(key), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(Error::Usage(format!(
                "repository {location}: no S3 credentials: set {CREDENTIAL_VARS} (and AWS_SESSION_TOKEN for temporary ones)"
            )));
        };
        let creds = match var("AWS_SESSION_TOKEN") {
            Some(t) => Credentials::new_with_token(key, secret, t),
            None => Credentials::new(key, secret),
        };
        let region = o
            .s3_region
            .clone()
            .or_else(|| var("AWS_REGION"))
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_string());
        let bad = |why: String| Error::Usage(format!("repository {location}: {why}"));
        let endpoint = loc
            .endpoint
            .parse()
            .map_err(|e| bad(format!("bad endpoint {}: {e}", loc.endpoint)))?;
        let style = if o.s3_virtual_host {
            UrlStyle::VirtualHost
        } else {
            UrlStyle::Path
        };
        let bucket = Bucket::new(endpoint, style, loc.bucket.clone(), region)
            .map_err(|e| bad(format!("bad bucket {}: {e}", loc.bucket)))?;
        let t = Some(o.s3_timeout);
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(t)
            .timeout_per_read(t)
            .timeout_per_write(t)
            .timeout_recv_response(t)
            .max_idle_connections_per_host(o.s3_connections)
            .max_idle_connections(o.s3_connections)
            .user_agent(concat!("coffer/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(S3Backend {
            counts: Counts::default(),
            bucket,
            creds,
            prefix: if loc.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", loc.prefix)
            },
            agent,
            location,
            connections: o.s3_connections,
        })
    }

    fn key(&self, kind: FileKind, name: &str) -> Result<String> {
        valid_name(kind, name)?;
        Ok(format!("{}{}", self.prefix, kind.path(name)))
    }

    /// The failure an answer (or a transport error) means.
    /// `location/path` of a key (the location already names the prefix).
    fn full(&self, key: &str) -> String {
        format!(
            "{}/{}",
            self.location,
            key.strip_prefix(&self.prefix).unwrap_or(key)
        )
    }

    fn fail(&self, op: &'static str, object: &str, failure: Failure, detail: String) -> Error {
        Error::Remote {
            op,
            object: self.full(object),
            failure,
            detail,
            tries: 1,
        }
    }

    fn transport(&self, op: &'static str, object: &str, e: ureq::Error) -> Error {
        let failure = match &e {
            // A name that does not resolve or a URL that cannot be built
            // will not get better by waiting.
            ureq::Error::HostNotFound | ureq::Error::BadUri(_) | ureq::Error::Http(_) => {
                Failure::Permanent
            }
            ureq::Error::Tls(_) | ureq::Error::Rustls(_) => Failure::Permanent,
            _ => Failure::Transient,
        };
        self.fail(op, object, failure, e.to_string())
    }

    /// An answer that is not a success: its status and S3 error code say
    /// what kind of failure it is.
    fn status(&self, op: &'static str, object: &str, mut resp: Response<ureq::Body>) -> Error {
        let status = resp.status();
        let body = resp
            .body_mut()
            .with_config()
            .limit(ERROR_BODY_MAX)
            .read_to_string()
            .unwrap_or_default();
        let code = xml_field(&body, "Code").unwrap_or_default();
        let message = xml_field(&body, "Message").unwrap_or_default();
        let detail = match (code.is_empty(), message.is_empty()) {
            (true, _) => format!("HTTP {status}"),
            (false, true) => format!("HTTP {status} {code}"),
            (false, false) => format!("HTTP {status} {code}: {message}"),
        };
        let full = self.full(object);
        if code == "NoSuchBucket" {
            return self.fail(
                op,
                object,
                Failure::Permanent,
                format!("{detail} (create the bucket {} first)", self.bucket.name()),
            );
        }
        match status.as_u16() {
            404 => Error::NotFound { object: full },
            412 => Error::AlreadyExists { path: full.into() },
            401 | 403 => self.fail(op, object, Failure::Denied, detail),
            507 => Error::DiskFull { object: full },
            _ if code == "QuotaExceeded" || code == "EntityTooLarge" && status == 400 => {
                Error::DiskFull { object: full }
            }
            408 | 429 | 500..=599 => self.fail(op, object, Failure::Transient, detail),
            _ if code == "SlowDown" || code == "RequestTimeout" => {
                self.fail(op, object, Failure::Transient, detail)
            }
            _ => self.fail(op, object, Failure::Permanent, detail),
        }
    }

    fn head(&self, kind: FileKind, name: &str) -> Result<Response<ureq::Body>> {
        let key = self.key(kind, name)?;
        let url = HeadObject::new(&self.bucket, Some(&self.creds), &key).sign(SIGN_FOR);
        let c = &self.counts;
        c.request(&c.head, "HEAD", || key.clone());
        let resp = self
            .agent
            .head(url.as_str())
            .call()
            .map_err(|e| self.transport("stat", &key, e))?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(self.status("stat", &key, resp))
        }
    }

    /// PUT with `If-None-Match: *`: `Ok(false)` when the name was taken.
    fn put_new(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<bool> {
        self.put_key(&self.key(kind, name)?, data)
    }

    /// [`S3Backend::put_new`] of any key.
    fn put_key(&self, key: &str, data: &[u8]) -> Result<bool> {
        let key = key.to_string();
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(data));
        let mut action = PutObject::new(&self.bucket, Some(&self.creds), &key);
        action.headers_mut().insert("content-md5", md5.clone());
        action.headers_mut().insert("if-none-match", "*");
        let url = action.sign(SIGN_FOR);
        let c = &self.counts;
        c.request(&c.put, "PUT", || key.clone());
        c.sent.fetch_add(data.len() as u64, Ordering::Relaxed);
        let resp = self
            .agent
            .put(url.as_str())
            .header("content-md5", &md5)
            .header("if-none-match", "*")
            .header("content-type", "application/octet-stream")
            .send(data)
            .map_err(|e| self.transport("write", &key, e))?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT => Ok(false),
            _ => Err(self.status("write", &key, resp)),
        }
    }

    /// One page of a listing under `prefix`.
    fn list_page(
        &self,
        prefix: &str,
        token: Option<&str>,
        delimiter: bool,
    ) -> Result<rusty_s3::actions::ListObjectsV2Response> {
        let mut action = ListObjectsV2::new(&self.bucket, Some(&self.creds));
        action.with_prefix(prefix);
        action.with_max_keys(1000);
        if delimiter {
            action.with_delimiter("/");
        }
        if let Some(t) = token {
            action.with_continuation_token(t);
        }
        let url = action.sign(SIGN_FOR);
        let c = &self.counts;
        c.request(&c.list, "LIST", || prefix.to_string());
        let mut resp = self
            .agent
            .get(url.as_str())
            .call()
            .map_err(|e| self.transport("list", prefix, e))?;
        if !resp.status().is_success() {
            return Err(self.status("list", prefix, resp));
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(LIST_PAGE_MAX)
            .read_to_string()
            .map_err(|e| self.transport("list", prefix, e))?;
        ListObjectsV2::parse_response(&body).map_err(|e| {
            self.fail(
                "list",
                prefix,
                Failure::Transient,
                format!("the listing does not parse ({e})"),
            )
        })
    }

    fn delete_batch(&self, kind: FileKind, names: &[String]) -> Result<()> {
        let keys: Vec<ObjectIdentifier> = names
            .iter()
            .map(|n| self.key(kind, n).map(ObjectIdentifier::new))
            .collect::<Result<_>>()?;
        let mut action = DeleteObjects::new(&self.bucket, Some(&self.creds), keys.iter());
        action.set_quiet(true);
        let url = action.sign(SIGN_FOR);
        let (body, md5) = action.body_with_md5();
        let what = format!("{} objects under {}", names.len(), kind.dir());
        let c = &self.counts;
        c.request(&c.delete, "DELETE", || what.clone());
        let mut resp = self
            .agent
            .post(url.as_str())
            .header("content-md5", &md5)
            .send(body.as_bytes())
            .map_err(|e| self.transport("delete", &what, e))?;
        if !resp.status().is_success() {
            return Err(self.status("delete", &what, resp));
        }
        let text = resp
            .body_mut()
            .with_config()
            .limit(LIST_PAGE_MAX)
            .read_to_string()
            .map_err(|e| self.transport("delete", &what, e))?;
        let parsed = rusty_s3::actions::DeleteObjectsResponse::parse(&text).map_err(|e| {
            self.fail(
                "delete",
                &what,
                Failure::Transient,
                format!("the answer does not parse ({e})"),
            )
        })?;
        match parsed.errors.iter().find(|e| e.code != "NoSuchKey") {
            None => Ok(()),
            Some(e) => Err(self.fail(
                "delete",
                &e.key,
                if e.code == "AccessDenied" {
                    Failure::Denied
                } else {
                    Failure::Transient
                },
                format!("{}: {}", e.code, e.message),
            )),
        }
    }

    fn read_range(&self, key: &str, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<()> {
        let url = GetObject::new(&self.bucket, Some(&self.creds), key).sign(SIGN_FOR);
        let end = offset + len as u64 - 1;
        let c = &self.counts;
        c.request(&c.get, "GET", || format!("{key} bytes {offset}-{end}"));
        let mut resp = self
            .agent
            .get(url.as_str())
            .header("range", &format!("bytes={offset}-{end}"))
            .call()
            .map_err(|e| self.transport("read", key, e))?;
        let short = || {
            Error::corrupt(
                self.full(key),
                format!(
                    "object is shorter than the {len} bytes at offset {offset} the index records (truncated)"
                ),
            )
        };
        match resp.status().as_u16() {
            206 => {}
            416 => return Err(short()),
            // A store that ignores Range would send the whole object: the
            // caller asked for a slice, so that is a store we cannot use
            // efficiently, and reading it all could be gigabytes.
            200 => {
                return Err(self.fail(
                    "read",
                    key,
                    Failure::Permanent,
                    "the store ignored the Range header (answered 200, not 206)".into(),
                ));
            }
            _ => return Err(self.status("read", key, resp)),
        }
        // Content-Range: bytes START-END/TOTAL: a range past the end of a
        // truncated object comes back shortened, never padded.
        let answered = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_content_range);
        match answered {
            Some((s, e)) if s == offset && e == end => {}
            Some((s, e)) if s == offset && e < end => return Err(short()),
            other => {
                return Err(self.fail(
                    "read",
                    key,
                    Failure::Transient,
                    format!("asked for bytes {offset}-{end}, the store answered {other:?}"),
                ));
            }
        }
        self.read_body(key, &mut resp, len as u64 + 1, Some(len as u64), buf)
    }

    /// Read an answer's body into `buf`, at most `limit` bytes, counting
    /// them; fewer or more than `want` (when the answer says) is a body
    /// cut short, which a retry may well get whole.
    fn read_body(
        &self,
        key: &str,
        resp: &mut Response<ureq::Body>,
        limit: u64,
        want: Option<u64>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        buf.clear();
        buf.reserve(want.unwrap_or(0).min(limit) as usize);
        let mut reader = resp.body_mut().with_config().limit(limit).reader();
        std::io::Read::read_to_end(&mut reader, buf)
            .map_err(|e| self.fail("read", key, Failure::Transient, e.to_string()))?;
        self.counts
            .received
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        match want {
            Some(n) if n != buf.len() as u64 => Err(self.fail(
                "read",
                key,
                Failure::Transient,
                format!("the body was cut short: {} of {n} bytes", buf.len()),
            )),
            _ => Ok(()),
        }
    }
}

/// `%2F` and friends decoded; anything malformed is left as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// `bytes 0-99/1234` → (0, 99).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let range = v.strip_prefix("bytes ")?.split('/').next()?;
    let (s, e) = range.split_once('-')?;
    Some((s.trim().parse().ok()?, e.trim().parse().ok()?))
}

/// The text of the first `<NAME>…</NAME>` in a small XML error body.
fn xml_field(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let len = body[start..].find("</")?;
    Some(body[start..start + len].trim().to_string())
}

/// `2026-12-05T19:21:43.000Z` (a listing) to a time.
fn parse_iso(s: &str) -> Option<SystemTime> {
    let t: jiff::Timestamp = s.parse().ok()?;
    Some(SystemTime::from(t))
}

/// `Sat, 05 Dec 2026 19:21:43 GMT` (Last-Modified) to a time.
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let z = jiff::fmt::rfc2822::parse(s).ok()?;
    Some(SystemTime::from(z.timestamp()))
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        // A store that ignores If-None-Match would replace a config: look
        // first (keys and locks have random names, packs, segments and
        // snapshots are named by their content).
        if kind == FileKind::Config && self.size(kind, name).is_ok() {
            return Err(Error::AlreadyExists {
                path: format!("{}/{}", self.location, kind.path(name)).into(),
            });
        }
        if self.put_new(kind, name, data)? {
            return Ok(());
        }
        // Taken. Content-named: an object of the same size under the same
        // name is this object (a retried or concurrent put of it).
        let existing = self.size(kind, name)?;
        if kind.is_content_named() && existing == data.len() as u64 {
            return Ok(());
        }
        Err(Error::AlreadyExists {
            path: format!("{}/{}", self.location, kind.path(name)).into(),
        })
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let key = self.key(kind, name)?;
        let url = GetObject::new(&self.bucket, Some(&self.creds), &key).sign(SIGN_FOR);
        let c = &self.counts;
        c.request(&c.get, "GET", || key.clone());
        let mut resp = self
            .agent
            .get(url.as_str())
            .call()
            .map_err(|e| self.transport("read", &key, e))?;
        if !resp.status().is_success() {
            return Err(self.status("read", &key, resp));
        }
        let max = kind.max_size();
        let declared = resp.body().content_length();
        if declared.is_some_and(|n| n > max) {
            return Err(Error::corrupt(
                self.full(&key),
                format!(
                    "it is {} bytes, more than the {max} an object of its kind may have",
                    declared.unwrap_or(0)
                ),
            ));
        }
        let mut buf = Vec::new();
        self.read_body(&key, &mut resp, max + 1, declared, &mut buf)?;
        // An answer without a length is bounded while read, as a local
        // file that grows is.
        if buf.len() as u64 > max {
            return Err(Error::corrupt(
                self.full(&key),
                format!("it is more than the {max} bytes an object of its kind may have"),
            ));
        }
        Ok(buf)
    }

    fn get_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let key = self.key(kind, name)?;
        if len == 0 {
            buf.clear();
            return Ok(());
        }
        self.read_range(&key, offset, len, buf)
    }

    fn list_each(&self, kind: FileKind, f: &mut dyn FnMut(ObjectInfo) -> Result<()>) -> Result<()> {
        let dir = match kind {
            FileKind::Config => self.prefix.clone(),
            k => format!("{}{}/", self.prefix, k.dir()),
        };
        let mut token: Option<String> = None;
        loop {
            let page = self.list_page(&dir, token.as_deref(), kind == FileKind::Config)?;
            for c in page.contents {
                // A store that URL-encodes keys without saying so (S3-NOTES:
                // Garage) would otherwise hide every object behind `%2F`.
                let key = if c.key.contains('%') {
                    percent_decode(&c.key)
                } else {
                    c.key
                };
                let name = key.rsplit('/').next().unwrap_or(&key).to_string();
                // Only objects where coffer would have put them: a pack
                // outside its two-hex-digit directory is someone else's.
                if valid_name(kind, &name).is_err()
                    || key != format!("{}{}", self.prefix, kind.path(&name))
                {
                    continue;
                }
                f(ObjectInfo {
                    name,
                    size: c.size.unwrap_or(0),
                    modified: c.last_modified.as_deref().and_then(parse_iso),
                })?;
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(()),
            }
        }
    }

    fn connections(&self) -> usize {
        self.connections
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn probe_create_once(&self) -> Result<Option<bool>> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
        let name = hex::encode(raw);
        // Outside every kind's directory: a probe a kill leaves behind is
        // never listed as an object (a name under locks/ would block every
        // command as an unreadable lock).
        let key = format!("{}coffer-probe-{name}", self.prefix);
        let first = self.put_key(&key, b"coffer create-once probe 1");
        let second = first
            .as_ref()
            .ok()
            .map(|_| self.put_key(&key, b"coffer create-once probe 2"));
        let _ = self.delete_key(&key);
        first?;
        match second {
            Some(Ok(stored)) => Ok(Some(!stored)),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }

    fn requests(&self) -> Option<super::Requests> {
        Some(self.counts.snapshot())
    }

    fn size(&self, kind: FileKind, name: &str) -> Result<u64> {
        let resp = self.head(kind, name)?;
        resp.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                self.fail(
                    "stat",
                    &kind.path(name),
                    Failure::Transient,
                    "the answer has no Content-Length".into(),
                )
            })
    }

    fn modified(&self, kind: FileKind, name: &str) -> Result<Option<SystemTime>> {
        let resp = self.head(kind, name)?;
        Ok(resp
            .headers()
            .get("last-modified")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date))
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        self.delete_key(&self.key(kind, name)?)
    }

    /// DeleteObjects, 1000 keys a request: a prune's thousands of packs
    /// in a few requests instead of one each.
    fn delete_many(&self, kind: FileKind, names: &[String]) -> Result<()> {
        names
            .chunks(DELETE_BATCH)
            .try_for_each(|batch| self.delete_batch(kind, batch))
    }
}

impl S3Backend {
    fn delete_key(&self, key: &str) -> Result<()> {
        let key = key.to_string();
        let url = DeleteObject::new(&self.bucket, Some(&self.creds), &key).sign(SIGN_FOR);
        let c = &self.counts;
        c.request(&c.delete, "DELETE", || key.clone());
        let resp = self
            .agent
            .delete(url.as_str())
            .call()
            .map_err(|e| self.transport("delete", &key, e))?;
        match resp.status().as_u16() {
            200..=299 | 404 => Ok(()),
            _ => Err(self.status("delete", &key, resp)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        assert_eq!(parse_content_range("bytes 0-99/1234"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, 9)));
        assert_eq!(parse_content_range("items 0-1/2"), None);
        let body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please reduce</Message></Error>";
        assert_eq!(xml_field(body, "Code").as_deref(), Some("SlowDown"));
        assert_eq!(xml_field(body, "Message").as_deref(), Some("Please reduce"));
        assert_eq!(xml_field(body, "Key"), None);
        assert_eq!(percent_decode("a%2Fpacks%2fab/x%zz%4"), "a/packs/ab/x%zz%4");
        let t = parse_iso("2026-12-05T19:21:43.000Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_796_498_503
        );
        assert_eq!(parse_http_date("Sat, 05 Dec 2026 19:21:43 GMT"), Some(t));
    }
}
