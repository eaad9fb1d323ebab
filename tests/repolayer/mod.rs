//! The repository layer under an operator's nightly jobs and a fault
//! campaign (issues 18 and 19): the backup after an interrupted one adopts
//! its leftovers in bounded memory; a truncated pack is refused like a
//! missing one; someone with write access but no key cannot stop or divert
//! backups (old garbage locks, symlinked directories, huge or non-regular
//! objects); killed runs clean up after themselves; sparse files are read
//! by their data only.
//!
//! Memory is measured as the peak RSS of exactly the process under test
//! (`wait4`), never as a time.

use crate::support::*;
use coffer::backend::Backend;
use coffer::backend::FileKind;
use coffer::backend::local::LocalBackend;
use coffer::blob::BlobKind;
use coffer::pack::seal_blob;
use coffer::pack::writer::PackWriter;
use coffer::repository::{Repository, Secret};
use std::fs;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

/// Run to completion and return the run and the peak RSS in bytes of that
/// one process: its `VmHWM`, sampled every 20 ms while it runs. Not
/// `wait4`'s `ru_maxrss`: that keeps the high-water mark from before
/// `exec`, when a forked child still counted the test harness's own
/// memory (251 MiB in a full-suite run, against 70 MiB measured alone).
/// Killed after `deadline`, so a hang fails instead of blocking.
// The child is reaped by wait4, which std's Child cannot see.
#[allow(clippy::zombie_processes)]
fn run_measured(inv: Invocation, deadline: Duration) -> (Run, u64) {
    let mut child = inv.spawn();
    drop(child.stdin.take());
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let pid = child.id() as libc::pid_t;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let watchdog = std::thread::spawn(move || {
        let start = Instant::now();
        let mut peak = 0u64;
        while !d2.load(std::sync::atomic::Ordering::SeqCst) {
            if start.elapsed() > deadline {
                // SAFETY: our own child, not yet reaped (`done` is unset).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return peak;
            }
            peak = peak.max(vm_hwm(pid).unwrap_or(0));
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    });
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid out-parameters.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let peak = watchdog.join().unwrap();
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    let run = Run {
        code,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    (run, peak)
}

/// The peak resident memory of a live process, from `/proc/PID/status`.
fn vm_hwm(pid: libc::pid_t) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn open_repo(env: &Env) -> (Arc<LocalBackend>, Repository) {
    let backend = Arc::new(LocalBackend::open(&env.repo));
    let secret = Secret::Passphrase(zeroize::Zeroizing::new(PASSWORD.as_bytes().to_vec()));
    let repo = Repository::open(backend.clone(), &secret).expect("open the test repository");
    (backend, repo)
}

/// Leave `packs` packs of `per_pack` incompressible 4 MiB blobs in
/// `packs/` with no index segment listing them: what a backup killed
/// before its segment leaves, built directly so gigabytes cost seconds.
/// Returns their total size.
fn plant_unindexed_packs(env: &Env, packs: usize, per_pack: usize) -> u64 {
    let (backend, repo) = open_repo(env);
    let total = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..2 {
            let (backend, repo, total) = (&backend, &repo, &total);
            s.spawn(move || {
                let mut data = Rng::new(77 + t as u64).bytes(4 * MIB);
                for p in (t..packs).step_by(2) {
                    let mut w = PackWriter::new();
                    for b in 0..per_pack {
                        data[..16]
                            .copy_from_slice(&[p as u64, b as u64].map(u64::to_le_bytes).concat());
                        let id = repo.keys().blob_id(&data);
                        w.add(seal_blob(
                            repo.keys(),
                            repo.id(),
                            BlobKind::Data,
                            id,
                            &data,
                            -5,
                        ));
                    }
                    let pack = w.finish(repo.keys(), repo.id());
                    backend
                        .put(FileKind::Pack, &pack.id.to_hex(), pack.bytes())
                        .unwrap();
                    total.fetch_add(
                        pack.bytes().len() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
            });
        }
    });
    total.into_inner()
}

/// 18.4: a killed multi-gigabyte backup's packs are adopted by the next
/// one in memory that does not grow with them, and it says so.
#[test]
fn adopting_gigabytes_of_leftover_packs_needs_little_memory() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("small.bin", MIB, 1);
    let leftovers = plant_unindexed_packs(&env, 320, 2);
    assert!(leftovers > 2 << 30, "{leftovers}");
    let inv = env.coffer().args(["--json", "backup"]).arg(&t.root);
    let (r, rss) = run_measured(inv, Duration::from_secs(600));
    let r = r.ok();
    assert!(
        rss < 200 << 20,
        "adopting {} MiB of leftover packs took {} MiB of memory",
        leftovers >> 20,
        rss >> 20
    );
    assert!(
        r.stderr.contains("adopting 320 packs"),
        "no line about the leftovers:\n{}",
        r.stderr
    );
    // They are indexed now: the next backup has nothing to adopt.
    let r = env.coffer().arg("backup").arg(&t.root).run().ok();
    assert!(!r.stderr.contains("adopting"), "{}", r.stderr);
}

/// The largest pack in the repository (a data pack) and its size.
fn largest_pack(env: &Env) -> (std::path::PathBuf, u64) {
    env.objects("packs")
        .into_iter()
        .map(|p| {
            let n = fs::metadata(&p).unwrap().len();
            (p, n)
        })
        .max_by_key(|(_, n)| *n)
        .expect("a pack")
}

/// A repository of 1 MiB packs holding one backup of `n` random files of
/// 700 KiB (`f0.bin`...): several data packs.
fn backed_up_in_small_packs(n: u64) -> (Env, TreeBuilder) {
    let env = Env::new();
    env.init_with(&["--pack-size", "1M"]);
    let t = TreeBuilder::new(env.path("src"));
    for i in 0..n {
        t.random_file(format!("f{i}.bin"), 700 * 1024, i);
    }
    env.backup_json(&[&t.root], &[]);
    (env, t)
}

/// 19.4: a pack cut short is refused like a missing one, naming it and
/// the repair; after the repair the next backup stores its content again.
#[test]
fn a_backup_refuses_to_build_on_a_truncated_pack() {
    let (env, t) = backed_up_in_small_packs(4);
    let (victim, len) = largest_pack(&env);
    let hex = file_name(&victim);
    fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    t.file(
        "new.txt",
        b"a change, so the backup has something to write\n",
    );
    let r = env.coffer().arg("backup").arg(&t.root).run().expect_code(1);
    assert!(r.stderr.contains(&hex), "{}", r.stderr);
    assert!(r.stderr.contains("coffer repair packs"), "{}", r.stderr);
    assert_eq!(
        env.snapshot_ids().len(),
        1,
        "the refused backup wrote a snapshot"
    );

    // As for a missing pack: the named repair, then the next backup
    // stores the lost content again and restores exactly.
    env.coffer().args(["repair", "packs"]).run();
    let s = env.backup_json(&[&t.root], &[]);
    assert!(num(&s, "data_added") > 0, "{s}");
    let id = s["snapshot_id"].as_str().unwrap();
    compare_trees(&t.root, &env.restore_of(id, &t.root));
}

/// A backup to a local disk compares with the index only the pack
/// directories that changed since the last comparison (a nightly backup of
/// a terabyte repository would otherwise stat its 100 000 packs): a pack
/// removed from a directory untouched for a while is still refused at
/// once, because removing it changed the directory. A pack cut short in
/// place leaves its directory as it was: new content that would refer into
/// it checks it first, and the full listing, due a week after the last
/// one, refuses it.
#[test]
fn a_backup_lists_only_changed_pack_directories_and_still_finds_lost_packs() {
    let (env, t) = backed_up_in_small_packs(6);
    // As in a repository of more than a few thousand packs, every pack
    // directory exists: a new one changes the directory above them all,
    // and then every pack is listed.
    for b in 0..=255u8 {
        fs::create_dir_all(env.repo.join("packs").join(format!("{b:02x}"))).unwrap();
    }
    let data_packs = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = env
            .objects("packs")
            .into_iter()
            .filter(|p| fs::metadata(p).unwrap().len() > 200_000)
            .collect();
        v.sort();
        v
    };
    let lost = data_packs()[0].clone();
    // Directories changed within the last two seconds are listed again next
    // time (coarse timestamps): let these settle, then a backup remembers them.
    std::thread::sleep(Duration::from_millis(2200));
    env.backup_json(&[&t.root], &[]);

    // Removed: its directory changed, so the next backup lists it and refuses.
    let bytes = fs::read(&lost).unwrap();
    fs::remove_file(&lost).unwrap();
    let r = env.coffer().arg("backup").arg(&t.root).run().expect_code(1);
    assert!(r.stderr.contains(&file_name(&lost)), "{}", r.stderr);
    assert!(r.stderr.contains("repair snapshots"), "{}", r.stderr);
    // Put back: listed again (its directory changed again), and accepted.
    fs::write(&lost, &bytes).unwrap();
    std::thread::sleep(Duration::from_millis(2200));
    let settled = std::time::SystemTime::now() - Duration::from_secs(2);
    env.backup_json(&[&t.root], &[]);

    // Cut short in place, in a directory that backup did not write to: the
    // directory is as it was, so a backup that only reuses what its parent
    // holds does not list it...
    let damaged = data_packs()
        .into_iter()
        .find(|p| {
            p.parent() != lost.parent()
                && fs::metadata(p.parent().unwrap())
                    .unwrap()
                    .modified()
                    .unwrap()
                    < settled
        })
        .expect("a data pack in a directory untouched since it settled");
    let len = fs::metadata(&damaged).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&damaged)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    env.backup_json(&[&t.root], &[]);
    let r = env.coffer().arg("check").run().expect_code(1);
    assert!(r.stdout.contains(&file_name(&damaged)), "{}", r.stdout);
    // ...but new content is never recorded as a reference into it: copies
    // of the files (new paths, the same chunks) are refused, naming it.
    let copies = TreeBuilder::new(env.path("copies"));
    for i in 0..6 {
        fs::copy(
            t.root.join(format!("f{i}.bin")),
            copies.root.join(format!("f{i}.bin")),
        )
        .unwrap();
    }
    let r = env
        .coffer()
        .arg("backup")
        .arg(&copies.root)
        .run()
        .expect_code(1);
    assert!(r.stderr.contains(&file_name(&damaged)), "{}", r.stderr);
    assert!(r.stderr.contains("coffer repair packs"), "{}", r.stderr);
    // And the full listing, due a week after the last, refuses any backup.
    let listed: Vec<_> = fs::read_dir(&env.cache)
        .unwrap()
        .map(|e| e.unwrap().path().join("packs-listed"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let week_ago = std::time::SystemTime::now() - Duration::from_secs(8 * 24 * 3600);
    fs::File::options()
        .write(true)
        .open(&listed[0])
        .unwrap()
        .set_modified(week_ago)
        .unwrap();
    let r = env.coffer().arg("backup").arg(&t.root).run().expect_code(1);
    assert!(r.stderr.contains(&file_name(&damaged)), "{}", r.stderr);
    assert!(r.stderr.contains("coffer repair packs"), "{}", r.stderr);
}

/// 19.6: an unreadable lock blocks only while it is younger than the stale
/// time; then it is reported and ignored, and plain `unlock` removes it.
#[test]
fn an_old_unreadable_lock_is_reported_and_ignored_and_unlock_removes_it() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.file("a.txt", b"hello\n");
    let name = format!("{:064x}", 0xbad_10c_u64);
    let bad = env.repo.join("locks").join(&name);
    fs::write(&bad, b"garbage planted by someone without the key").unwrap();
    // Younger than the stale time: it still blocks.
    env.coffer()
        .arg("backup")
        .arg(&t.root)
        .run()
        .expect_code(1)
        .stderr_has(&name);
    // Two hours old (stale after 30 minutes): reported, ignored.
    set_mtime(&bad, now_secs() - 7200, 0);
    for args in [vec!["backup", t.root.to_str().unwrap()], vec!["prune"]] {
        let r = env.coffer().args(&args).run().ok();
        assert_eq!(
            r.stderr.matches(&name).count(),
            1,
            "`{}` did not report the old unreadable lock once:\n{}",
            args.join(" "),
            r.stderr
        );
        assert!(
            r.stderr.contains("coffer unlock"),
            "`{}` did not report the old unreadable lock:\n{}",
            args.join(" "),
            r.stderr
        );
    }
    assert!(bad.exists(), "only unlock removes it");
    let r = env.coffer().arg("unlock").run().ok();
    assert!(r.stdout.contains("1 locks removed"), "{}", r.stdout);
    assert!(!bad.exists(), "unlock left the old unreadable lock");
}

/// 19.6: a directory inside the repository replaced by a symbolic link is
/// refused, naming it; nothing is written where it points.
#[test]
fn the_backend_never_writes_through_a_symlinked_directory() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("a.bin", 100 * 1024, 1);
    env.backup_json(&[&t.root], &[]);
    let elsewhere = env.path("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();

    // A pack directory moved away and linked back.
    let sub = fs::read_dir(env.repo.join("packs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let sub_name = file_name(&sub);
    fs::rename(&sub, elsewhere.join(&sub_name)).unwrap();
    std::os::unix::fs::symlink(elsewhere.join(&sub_name), &sub).unwrap();
    t.random_file("b.bin", 200 * 1024, 2);
    let before = dir_size(&elsewhere);
    let r = env.coffer().arg("backup").arg(&t.root).run().expect_code(1);
    assert!(
        r.stderr.contains(&format!("packs/{sub_name}")) && r.stderr.contains("symbolic link"),
        "{}",
        r.stderr
    );
    assert_eq!(dir_size(&elsewhere), before, "written through the link");
    fs::remove_file(&sub).unwrap();
    fs::rename(elsewhere.join(&sub_name), &sub).unwrap();

    // The snapshots directory linked elsewhere.
    let outside = env.path("outside-snapshots");
    fs::rename(env.repo.join("snapshots"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, env.repo.join("snapshots")).unwrap();
    let count = fs::read_dir(&outside).unwrap().count();
    let r = env.coffer().arg("backup").arg(&t.root).run().expect_code(1);
    assert!(
        r.stderr.contains("snapshots") && r.stderr.contains("symbolic link"),
        "{}",
        r.stderr
    );
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        count,
        "written through the link"
    );
}

/// 19.6: objects are bounded before they are read: a huge file planted as
/// a snapshot is skipped without being read, `config` as a link to
/// `/dev/zero` or as a FIFO is refused at once.
#[test]
fn oversized_and_non_regular_objects_are_refused_before_reading() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.file("a.txt", b"hello\n");
    env.backup_json(&[&t.root], &[]);

    // A 3 GiB sparse file under snapshots/.
    let name = format!("{:064x}", 0x5_1a9e_u64);
    let huge = env.repo.join("snapshots").join(&name);
    fs::File::create(&huge).unwrap().set_len(3 << 30).unwrap();
    let (r, rss) = run_measured(
        env.coffer().args(["--json", "snapshots"]),
        Duration::from_secs(120),
    );
    assert!(r.stderr.contains(&name), "{}", r.stderr);
    assert_eq!(r.json().as_array().unwrap().len(), 1, "{}", r.stdout);
    assert!(rss < 256 << 20, "listing snapshots took {} MiB", rss >> 20);
    fs::remove_file(&huge).unwrap();

    // config as a link to /dev/zero, then as a FIFO. The address-space
    // limit keeps an unbounded read from taking the machine's memory. With
    // config.copy intact the damage is a warning (exit 3); without it the
    // repository cannot be opened (exit 1); either way at once, naming it.
    let config = env.repo.join("config");
    let copy = env.repo.join("config.copy");
    let saved = fs::read(&config).unwrap();
    let limited = || env.coffer().wrap(["prlimit", "--as=3000000000", "--"]);
    let c = std::ffi::CString::new(config.to_str().unwrap()).unwrap();
    for (planted, with_copy, want) in [
        ("link", true, 3),
        ("fifo", true, 3),
        ("link", false, 1),
        ("fifo", false, 1),
    ] {
        fs::remove_file(&config).unwrap();
        if planted == "link" {
            std::os::unix::fs::symlink("/dev/zero", &config).unwrap();
        } else {
            // SAFETY: a valid C string.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        }
        if !with_copy {
            fs::remove_file(&copy).unwrap();
        }
        let (r, _) = run_measured(limited().arg("snapshots"), Duration::from_secs(60));
        assert_eq!(r.code, want, "config as a {planted}: {}", r.stderr);
        assert!(r.stderr.contains("config"), "{}", r.stderr);
        if !with_copy {
            fs::write(&copy, &saved).unwrap();
        }
    }
    fs::remove_file(&config).unwrap();
    fs::write(&config, saved).unwrap();
    env.coffer().arg("snapshots").run().ok();
}

/// 19.10: a killed backup's lock is removed by the next run on the same
/// host (its process is gone), and `stats` reports the space of the
/// temporary files killed puts left.
#[test]
fn killed_runs_leave_no_dead_locks_and_stats_reports_temporary_files() {
    let env = Env::new();
    env.init_with(&["--pack-size", "1M"]);
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("a.bin", 2 * MIB, 1);
    for _ in 0..3 {
        env.killed_backup(&t.root);
    }
    // Each run removed the one before it left: one dead lock, not three.
    assert_eq!(env.objects("locks").len(), 1, "{:?}", env.objects("locks"));
    // What a put killed mid-write leaves behind.
    let tmp_dir = env.repo.join("packs").join("ab");
    fs::create_dir_all(&tmp_dir).unwrap();
    fs::write(
        tmp_dir.join(format!("ab{:062x}.tmp-0123456789abcdef", 1)),
        vec![7u8; 3 * MIB],
    )
    .unwrap();

    env.backup_json(&[&t.root], &[]);
    assert!(
        env.objects("locks").is_empty(),
        "the next backup left its host's dead locks: {:?}",
        env.objects("locks")
    );
    let v = env
        .coffer()
        .args(["--json", "stats", "--mode", "raw-data"])
        .run()
        .ok()
        .json();
    assert_eq!(num(&v["repository"], "temporary_files"), 1, "{v}");
    assert_eq!(
        num(&v["repository"], "temporary_bytes"),
        3 * MIB as u64,
        "{v}"
    );
    let r = env
        .coffer()
        .args(["stats", "--mode", "raw-data"])
        .run()
        .ok();
    assert!(r.stdout.contains("Temporary files"), "{}", r.stdout);
}

/// 19.11: the holes of a sparse file are not read; the file restores
/// byte for byte.
#[test]
fn a_sparse_file_is_read_by_its_data_only_and_restores_exactly() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    let a = Rng::new(3).bytes(MIB);
    let b = Rng::new(4).bytes(300 * 1024);
    let size = 2u64 << 30;
    let f = t.sparse(
        "disk.img",
        size,
        &[
            (5 * MIB as u64, &a),
            (size / 2 + 12345, &b),
            (size - 100, b"tail"),
        ],
    );
    let s = env.backup_json(&[&t.root], &[]);
    assert_eq!(num(&s, "total_bytes_processed"), size, "{s}");
    assert!(
        num(&s, "bytes_read") < 64 * MIB as u64,
        "read {} bytes of a sparse file holding ~1.3 MiB of data",
        num(&s, "bytes_read")
    );
    let id = s["snapshot_id"].as_str().unwrap().to_string();
    let got = env.restore_of(&id, &t.root).join("disk.img");
    let st = fs::metadata(&got).unwrap();
    assert_eq!(st.len(), size);
    // Restore leaves holes where the zeros were.
    use std::os::unix::fs::MetadataExt;
    assert!(
        st.blocks() * 512 < 64 * MIB as u64,
        "restored {} blocks",
        st.blocks()
    );
    let (mut x, mut y) = (fs::File::open(&f).unwrap(), fs::File::open(&got).unwrap());
    let (mut bx, mut by) = (vec![0u8; 4 * MIB], vec![0u8; 4 * MIB]);
    let mut off = 0u64;
    loop {
        let n = x.read(&mut bx).unwrap();
        y.read_exact(&mut by[..n]).unwrap();
        assert!(
            bx[..n] == by[..n],
            "restored bytes differ near offset {off}"
        );
        if n == 0 {
            break;
        }
        off += n as u64;
    }
    assert_eq!(off, size);
    // Read again, it finds every chunk already stored: holes are the same
    // zero chunks as before (only a tree blob may be new).
    let s2 = env.backup_json(&[&t.root], &["--force"]);
    assert!(num(&s2, "data_added") < 64 * 1024, "{s2}");
}
