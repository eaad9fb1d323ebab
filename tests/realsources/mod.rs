//! Real programs as sources (issue #8 items 3 and 5): a PostgreSQL server
//! started for the test, dumped day after day through
//! `backup --stdin-from-command`; and a log file that a writer keeps
//! appending to while it is backed up.
//!
//! The PostgreSQL tests need the server binaries (`apt-get install
//! postgresql`). Without them they print why and pass, unless
//! `COFFER_REQUIRE_PG` is set (CI sets it), in which case they fail.

use crate::support::*;
use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

// ---------------------------------------------------------------------------
// A throwaway PostgreSQL server

/// The newest `/usr/lib/postgresql/<version>/bin` that holds `initdb`.
fn pg_bindir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            [
                "initdb",
                "pg_ctl",
                "pg_dump",
                "pg_dumpall",
                "pgbench",
                "psql",
            ]
            .iter()
            .all(|t| bin.join(t).is_file())
            .then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// The binaries, or `None` after saying why the test is skipped. With
/// `COFFER_REQUIRE_PG` set a missing server is a failure, so CI cannot
/// pass by skipping.
fn pg_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(bin) = pg_bindir() {
        return Some(bin);
    }
    let why = "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin \
               (apt-get install postgresql)";
    if std::env::var_os("COFFER_REQUIRE_PG").is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{test}: COFFER_REQUIRE_PG is set but there are {why}");
    }
    println!("SKIPPED {test}: {why}; set COFFER_REQUIRE_PG=1 to make this a failure");
    None
}

/// uid and gid of `nobody`: postgres refuses to run as root.
fn nobody() -> (u32, u32) {
    // SAFETY: a valid C string; the returned record is read at once, before
    // any other getpw* call could overwrite it.
    unsafe {
        let pw = libc::getpwnam(c"nobody".as_ptr());
        assert!(!pw.is_null(), "running as root and there is no user nobody");
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// A PostgreSQL cluster in a temp dir, listening on loopback TCP only,
/// with trust authentication for the superuser `postgres`. Stopped on drop.
struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Who runs the server: `nobody` when the test runs as root.
    owner: Option<(u32, u32)>,
}

impl Pg {
    fn start(bin: &Path) -> Pg {
        let dir = tempfile::Builder::new()
            .prefix("coffer-pg-")
            .tempdir()
            .expect("temp dir for the cluster");
        let owner = is_root().then(nobody);
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown cluster dir");
        }
        let mut pg = Pg {
            dir,
            bin: bin.to_path_buf(),
            port: 0,
            owner,
        };
        let data = pg.data();
        let init = pg
            .server_cmd("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .args(["--locale=C"])
            .output()
            .expect("run initdb");
        assert!(
            init.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&init.stdout),
            String::from_utf8_lossy(&init.stderr)
        );
        // The port is free when chosen but another process may take it
        // before the server binds it: try a few.
        for attempt in 0..5 {
            pg.port = free_port();
            let opts = format!(
                "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
                 -c fsync=off -c full_page_writes=off -c synchronous_commit=off",
                pg.port
            );
            let log = pg.dir.path().join("server.log");
            let out = pg
                .server_cmd("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "120", "-o", &opts, "start"])
                .stdout(Stdio::null())
                .output()
                .expect("run pg_ctl start");
            if out.status.success() {
                return pg;
            }
            let text = fs::read_to_string(&log).unwrap_or_default();
            assert!(
                attempt < 4 && text.contains("could not bind"),
                "pg_ctl start failed: {}\nserver log:\n{text}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        unreachable!("the loop returns or panics");
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A server-side program, run as the cluster's owner.
    fn server_cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin.join(tool));
        c.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            // std clears the supplementary groups when root changes uid.
            c.uid(uid).gid(gid);
        }
        c
    }

    /// `-h 127.0.0.1 -p PORT -U postgres`, for every client program.
    fn conn(&self) -> Vec<String> {
        vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "postgres".into(),
        ]
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Run a client program with the connection options; it must succeed.
    fn client(&self, tool: &str, args: &[&str]) -> String {
        let out = Command::new(self.tool(tool))
            .args(self.conn())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One SQL statement's result, unaligned and without headers.
    fn sql(&self, db: &str, sql: &str) -> String {
        self.client(
            "psql",
            &[
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-c",
                sql,
            ],
        )
        .trim()
        .to_string()
    }

    /// `pg_dump DB` as the backup runs it. A fixed `--restrict-key` (where
    /// pg_dump has the option) keeps two dumps of the same state identical:
    /// by default it draws a random key for every dump.
    fn dump_cmd(&self, db: &str) -> Vec<String> {
        let pg_dump = self.tool("pg_dump");
        let mut cmd = vec![pg_dump.to_string_lossy().into_owned()];
        cmd.extend(self.conn());
        let help = Command::new(&pg_dump)
            .arg("--help")
            .output()
            .expect("pg_dump --help");
        if String::from_utf8_lossy(&help.stdout).contains("--restrict-key") {
            cmd.push("--restrict-key=cofferTestKey".into());
        }
        cmd.push(db.into());
        cmd
    }

    fn stop(&self) {
        let _ = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
    }
}

/// TPC-B-like transactions (pgbench's own) whose account is drawn from
/// `[lo, hi]` only: the hot rows of a real application.
const HOT_TPCB: &str = "\\set aid random(:lo, :hi)
\\set bid random(1, :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
";

/// Aggregates that change if any row of the pgbench tables differs.
fn fingerprint(pg: &Pg, db: &str) -> String {
    pg.sql(
        db,
        "SELECT (SELECT count(*) || ':' || sum(abalance) || ':' || md5(string_agg(filler, '' ORDER BY aid)) FROM pgbench_accounts) \
         || '/' || (SELECT count(*) || ':' || sum(delta) FROM pgbench_history) \
         || '/' || (SELECT sum(tbalance) FROM pgbench_tellers) \
         || '/' || (SELECT sum(bbalance) FROM pgbench_branches)",
    )
}

#[test]
fn postgres_daily_dumps_restore_exactly_and_deduplicate() {
    let Some(bin) = pg_or_skip("postgres_daily_dumps_restore_exactly_and_deduplicate") else {
        return;
    };
    const SCALE: u32 = 3; // 300 000 accounts: a ~30 MB dump
    const DAYS: u32 = 3;
    let pg = Pg::start(&bin);
    pg.sql("postgres", "CREATE DATABASE bench");
    pg.client("pgbench", &["-i", "-q", "-s", &SCALE.to_string(), "bench"]);
    // pgbench pads `filler` with blanks, which zstd shrinks ~100-fold: with
    // that, any backup looks small. Text rows make the repository's growth
    // measure deduplication, not compression.
    pg.sql(
        "bench",
        "UPDATE pgbench_accounts SET filler = substr(repeat(md5(aid::text), 3), 1, 84)",
    );
    pg.sql("bench", "VACUUM FULL pgbench_accounts");
    let script = pg.dir.path().join("hot-tpcb.sql");
    fs::write(&script, HOT_TPCB).expect("write pgbench script");

    let env = Env::new();
    env.init();
    let dump = pg.dump_cmd("bench");
    let accounts = SCALE * 100_000;
    let mut first_growth = 0;
    for day in 1..=DAYS {
        if day > 1 {
            // 1% of the accounts, a different window each day, take
            // 300 transactions.
            let lo = (day - 1) * accounts / 10;
            let hi = lo + accounts / 100;
            pg.client(
                "pgbench",
                &[
                    "-n",
                    "-c",
                    "1",
                    "-t",
                    "300",
                    "--random-seed",
                    &day.to_string(),
                    "-D",
                    &format!("lo={lo}"),
                    "-D",
                    &format!("hi={hi}"),
                    "-D",
                    &format!("scale={SCALE}"),
                    "-f",
                    &script.to_string_lossy(),
                    "bench",
                ],
            );
        }
        let before = env.repo_size();
        let r = env
            .coffer()
            .args(["--json", "backup", "--stdin-name", "bench.sql"])
            .args(["--stdin-from-command", "--"])
            .args(&dump)
            .run()
            .ok();
        let growth = env.repo_size() - before;
        let summary = r.summary();
        let size = num(&summary, "total_bytes_processed");
        // The server is idle now: the same command gives the same bytes.
        let expected = Command::new(&dump[0])
            .args(&dump[1..])
            .output()
            .expect("run pg_dump");
        assert!(expected.status.success(), "pg_dump to compare failed");
        assert_eq!(size, expected.stdout.len() as u64, "day {day}: dump size");
        let id = summary["snapshot_id"].as_str().expect("snapshot id");
        let got = fs::read(env.restore_of(id, Path::new("/bench.sql"))).expect("restored dump");
        assert!(
            got == expected.stdout,
            "day {day}: the restored dump differs from pg_dump's output ({} vs {} bytes)",
            got.len(),
            expected.stdout.len()
        );
        println!("day {day}: dump {size} bytes, repository grew {growth} bytes");
        if day == 1 {
            first_growth = growth;
        } else {
            // Expected ~15%: the hot window's rows move to the table's end,
            // so a few chunks around it and the tail change.
            assert!(
                growth < first_growth / 2,
                "day {day}: the repository grew {growth} bytes, the first dump took \
                 {first_growth}: consecutive dumps do not deduplicate"
            );
        }
    }
    // What was restored is a dump a server accepts, with the same rows.
    let restored = env.restore_of("latest", Path::new("/bench.sql"));
    pg.sql("postgres", "CREATE DATABASE restored");
    pg.client(
        "psql",
        &[
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "restored",
            "-f",
            &restored.to_string_lossy(),
        ],
    );
    assert_eq!(fingerprint(&pg, "restored"), fingerprint(&pg, "bench"));
    env.check_clean();
}

#[test]
fn failing_pg_dumpall_fails_the_backup_and_records_nothing() {
    let Some(bin) = pg_or_skip("failing_pg_dumpall_fails_the_backup_and_records_nothing") else {
        return;
    };
    let pg = Pg::start(&bin);
    let env = Env::new();
    env.init();
    let mut dumpall = vec![pg.tool("pg_dumpall").to_string_lossy().into_owned()];
    dumpall.extend(pg.conn());
    env.coffer()
        .args([
            "backup",
            "--stdin-name",
            "all.sql",
            "--stdin-from-command",
            "--",
        ])
        .args(&dumpall)
        .run()
        .ok();
    assert_eq!(env.snapshot_ids().len(), 1);
    let packs = env.objects("packs");

    pg.stop();
    let r = env
        .coffer()
        .args([
            "backup",
            "--stdin-name",
            "all.sql",
            "--stdin-from-command",
            "--",
        ])
        .args(&dumpall)
        .env("PGCONNECT_TIMEOUT", "10")
        .run()
        .expect_code(1);
    // pg_dumpall's own complaint reaches the user, then coffer's verdict.
    assert!(
        r.stderr.contains("pg_dumpall") && r.stderr.contains("connection"),
        "pg_dumpall's error is shown: {}",
        r.stderr
    );
    assert!(r.stderr.contains("no snapshot"), "{}", r.stderr);
    assert_eq!(
        env.snapshot_ids().len(),
        1,
        "the failed dump left a snapshot"
    );
    assert_eq!(env.objects("packs"), packs, "the failed dump stored data");
}

// ---------------------------------------------------------------------------
// Files that change or vanish while they are backed up

/// Appends numbered lines to `path` until `stop` is set; returns how many.
fn append_until(path: &Path, stop: &std::sync::atomic::AtomicBool) -> u64 {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open the log for appending");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        writeln!(f, "{n:>10} live line appended while the backup runs").expect("append");
        n += 1;
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
    n
}

#[test]
fn a_log_appended_during_backup_is_stored_as_a_prefix_and_flagged() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("app"));
    for i in 0..20 {
        t.random_file(format!("data/f{i:02}"), 50_000 + i * 7_919, i as u64);
    }
    write_mixed_file(&t.path("data/big"), 3_000_000, 9);
    t.set_all_mtimes();
    // Big enough that each of the two reads of it outlasts many appends.
    let log = t.path("logs/app.log");
    write_mixed_file(&log, 48 << 20, 4);
    let stop = AtomicBool::new(false);
    let (r, appended) = std::thread::scope(|s| {
        let writer = s.spawn(|| append_until(&log, &stop));
        // The backup starts after the writer does and the writer stops only
        // when the backup has exited, so every read of the log overlaps it.
        while fs::metadata(&log).expect("stat log").len() == 48 << 20 {
            std::thread::yield_now();
        }
        let r = env
            .coffer()
            .args(["--json", "backup"])
            .arg(&t.root)
            .run_any();
        stop.store(true, Ordering::Relaxed);
        (r, writer.join().expect("writer thread"))
    });
    let r = r.expect_code(3);
    assert!(appended > 0);
    let summary = r.summary();
    assert_eq!(num(&summary, "warnings"), 1, "{}", r.stdout);
    let log_str = log.to_string_lossy();
    let named = r.stdout.lines().any(|l| {
        serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
            v["message_type"] == "error"
                && v["item"] == log_str.as_ref()
                && v["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("changed while it was read"))
        })
    });
    assert!(
        named,
        "--json does not name {log_str} as changed:\n{}",
        r.stdout
    );
    let id = summary["snapshot_id"].as_str().expect("snapshot id");
    // The tree marks the entry.
    let spec = format!("{id}:{}", t.path("logs").display());
    let tree = env.coffer().args(["cat", "tree", &spec]).run().ok().json();
    let node = tree["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["name"] == "app.log"))
        .unwrap_or_else(|| panic!("app.log not in {tree}"));
    assert_eq!(num(node, "flags") & 1, 1, "not flagged as changed: {node}");

    let back = env.restore_of(id, &t.root);
    compare_trees(&t.path("data"), &back.join("data"));
    let stored = fs::read(back.join("logs/app.log")).expect("restored log");
    let last = fs::read(&log).expect("final log");
    assert!(
        stored.len() >= 48 << 20 && stored.len() <= last.len(),
        "restored log has {} bytes, the log had {} at the start and {} at the end",
        stored.len(),
        48 << 20,
        last.len()
    );
    assert!(
        last[..stored.len()] == stored[..],
        "the restored log is not a prefix of the final log"
    );
}

/// Whether process `pid` has `path` open.
fn has_open(pid: u32, path: &Path) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|e| e.ok())
        .any(|e| fs::read_link(e.path()).is_ok_and(|t| t == path))
}

#[test]
fn a_file_deleted_during_backup_is_skipped_with_a_warning() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    // One reader thread takes files in name order, so `z-victim` is read
    // after `a-big`; the directory has been listed by the time `a-big` is
    // open, so deleting `z-victim` then makes it vanish between listing and
    // reading.
    let big = t.random_file("a-big", 64 << 20, 1);
    t.random_file("m-kept", 100_000, 2);
    let victim = t.random_file("z-victim", 100_000, 3);
    let mut child = env
        .coffer()
        .args(["--json", "backup", "--threads", "1"])
        .arg(&t.root)
        .spawn();
    drop(child.stdin.take());
    let pid = child.id();
    let mut seen = false;
    while !seen {
        if child.try_wait().expect("poll backup").is_some() {
            break;
        }
        seen = has_open(pid, &big);
        // Leave the CPU to the backup: reading 64 MB takes far longer.
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    assert!(
        seen,
        "the backup ended before it was seen reading {}; cannot delete in time",
        big.display()
    );
    fs::remove_file(&victim).expect("delete the victim");
    let out = child.wait_with_output().expect("wait for backup");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    let victim_str = victim.to_string_lossy();
    assert!(
        stdout.lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                v["message_type"] == "error"
                    && v["item"] == victim_str.as_ref()
                    && v["error"].as_str().is_some_and(|e| e.contains("vanished"))
            })
        }),
        "no warning names {victim_str} as vanished:\n{stdout}"
    );
    let ls = env.coffer().args(["ls", "latest"]).run().ok();
    assert!(!ls.stdout.contains("z-victim"), "{}", ls.stdout);
    // The directory's own mtime changed with the deletion: compare files.
    let back = env.restore_of("latest", &t.root);
    for name in ["a-big", "m-kept"] {
        assert!(
            fs::read(back.join(name)).expect("restored file")
                == fs::read(t.path(name)).expect("source"),
            "{name} restored wrong"
        );
    }
    assert!(!back.join("z-victim").exists());
}
