//! Reading snapshots without restoring them: `diff`, `find` and `stats`,
//! through the real binary, human and JSON output.

use crate::support::*;
use std::fs;

/// Two nightly snapshots of a small application home: one model changed,
/// one removed, one added, a directory replaced by a file, a mode change.
fn two_days(env: &Env) -> (TreeBuilder, String, String) {
    env.init();
    let t = TreeBuilder::new(env.path("home"));
    t.file("app/db/data.sql", b"create table t (x int);\n");
    t.file("models-user-a/model.bin", &Rng::new(1).bytes(200_000));
    t.file("models-user-b/model.bin", &Rng::new(2).bytes(50_000));
    t.file("logs/app.log", b"started\n");
    t.dir("cache/entries");
    t.file("cache/entries/1", b"x");
    t.file("keys/id", b"secret\n");
    t.symlink("current", "models-user-a");
    env.backup_json(&[&t.root], &[]);

    t.file(
        "app/db/data.sql",
        b"create table t (x int);\ninsert into t values (1);\n",
    );
    fs::remove_dir_all(t.path("models-user-b")).unwrap();
    t.file("models-user-c/model.bin", &Rng::new(3).bytes(70_000));
    fs::remove_dir_all(t.path("cache")).unwrap();
    t.file("cache", b"now a file\n");
    t.mode("keys/id", 0o600);
    env.backup_json(&[&t.root], &[]);
    let ids = env.snapshot_ids();
    assert_eq!(ids.len(), 2);
    (t, ids[0].clone(), ids[1].clone())
}

#[test]
fn diff_lists_each_change_once_with_restic_markers() {
    let env = Env::new();
    let (t, day1, day2) = two_days(&env);
    let root = t.root.display().to_string();
    let out = env
        .coffer()
        .args(["diff", &day1[..8], &day2[..8]])
        .run()
        .ok()
        .stdout;
    let changes: Vec<&str> = out.lines().take_while(|l| !l.is_empty()).collect();
    let want = [
        format!("M    {root}/app/db/data.sql"),
        format!("T    {root}/cache"),
        format!("-    {root}/cache/entries/"),
        format!("-    {root}/cache/entries/1"),
        format!("-    {root}/models-user-b/"),
        format!("-    {root}/models-user-b/model.bin"),
        format!("+    {root}/models-user-c/"),
        format!("+    {root}/models-user-c/model.bin"),
    ];
    assert_eq!(changes, want, "full output:\n{out}");
    assert!(
        out.contains("Files:           2 new,         2 removed,         1 changed"),
        "{out}"
    );

    // --metadata adds the mode change (and the directories whose mtime moved).
    let out = env
        .coffer()
        .args(["diff", "--metadata", &day1, &day2])
        .run()
        .ok()
        .stdout;
    assert!(out.contains(&format!("U    {root}/keys/id\n")), "{out}");

    // JSON: one change per line, then the statistics.
    let r = env
        .coffer()
        .args(["--json", "diff", &day1, "latest"])
        .run()
        .ok();
    let lines: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let (stats, changes) = lines.split_last().unwrap();
    assert_eq!(changes.len(), want.len());
    assert!(changes.iter().all(|c| c["message_type"] == "change"));
    assert_eq!(stats["message_type"], "statistics");
    assert_eq!(stats["changed_files"], 1);
    assert_eq!(stats["type_changed"], 1);
    assert_eq!(
        stats["added"]["files"], 2,
        "model.bin and the new file `cache`"
    );
    assert_eq!(stats["added"]["bytes"], 70_000 + 11);
    assert_eq!(stats["removed"]["files"], 2);
    assert_eq!(
        stats["removed"]["dirs"], 3,
        "cache, cache/entries, models-user-b"
    );
    assert_eq!(stats["source_snapshot"], day1.as_str());
    assert_eq!(stats["target_snapshot"], day2.as_str());

    // One directory of each, and a snapshot against itself.
    let out = env
        .coffer()
        .arg("diff")
        .arg(format!("{day1}:{root}/app"))
        .arg(format!("{day2}:{root}/app"))
        .run()
        .ok()
        .stdout;
    assert!(
        out.starts_with(&format!("M    {root}/app/db/data.sql\n\n")),
        "{out}"
    );
    let out = env.coffer().args(["diff", &day2, &day2]).run().ok().stdout;
    assert!(out.starts_with("\nFiles:"), "{out}");

    // A file is not a directory to compare; an unknown snapshot is named.
    env.coffer()
        .arg("diff")
        .arg(format!("{day1}:{root}/keys/id"))
        .arg(&day2)
        .run()
        .expect_code(1)
        .stderr_has("names a file");
    env.coffer()
        .args(["diff", &day1, "ffffffff"])
        .run()
        .expect_code(1)
        .stderr_has("no snapshot matches \"ffffffff\"");
}

#[test]
fn find_searches_every_snapshot_by_name_path_time_and_blob() {
    let env = Env::new();
    let (t, day1, day2) = two_days(&env);
    let root = t.root.display().to_string();
    let out = env.coffer().args(["find", "model.bin"]).run().ok().stdout;
    // Newest snapshot first, each with its own matches.
    let want = format!("Found matching entries in snapshot {} from ", &day2[..8]);
    assert!(out.starts_with(&want), "{out}");
    let paths: Vec<&str> = out.lines().filter(|l| l.starts_with('/')).collect();
    assert_eq!(
        paths,
        [
            format!("{root}/models-user-a/model.bin"),
            format!("{root}/models-user-c/model.bin"),
            format!("{root}/models-user-a/model.bin"),
            format!("{root}/models-user-b/model.bin"),
        ]
    );

    // A path pattern, case folding, one snapshot.
    let out = env
        .coffer()
        .args([
            "find",
            "-i",
            &format!("{root}/MODELS-*"),
            "--snapshot",
            &day1[..8],
        ])
        .run()
        .ok()
        .stdout;
    let paths: Vec<&str> = out.lines().filter(|l| l.starts_with('/')).collect();
    assert_eq!(
        paths,
        [
            format!("{root}/models-user-a"),
            format!("{root}/models-user-b")
        ]
    );

    // By modification time: only what was written after this mtime.
    set_mtime(&t.path("logs/app.log"), 1_000_000_000, 0);
    env.backup_json(&[&t.root], &[]);
    let r = env
        .coffer()
        .args([
            "--json",
            "find",
            "--newest",
            "2001-09-10",
            "--snapshot",
            "latest",
        ])
        .run()
        .ok();
    let lines: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let matches: Vec<&str> = lines
        .iter()
        .filter(|l| l["message_type"] == "match")
        .map(|l| l["path"].as_str().unwrap())
        .collect();
    assert_eq!(matches, [format!("{root}/logs/app.log")]);
    assert_eq!(lines.last().unwrap()["snapshots_searched"], 1);

    env.coffer()
        .args(["find", "--blob", "xyz"])
        .run()
        .expect_code(1)
        .stderr_has("not a hex id");
    env.coffer()
        .args(["find", "--newest", "yesterday", "x"])
        .run()
        .expect_code(1)
        .stderr_has("--newest");
    env.coffer()
        .arg("find")
        .run()
        .expect_code(1)
        .stderr_has("find needs a pattern");
}

#[test]
fn find_by_pack_names_the_files_stored_in_it() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("a/one.bin", 300_000, 7);
    t.random_file("b/two.bin", 300_000, 8);
    env.backup_json(&[&t.root], &[]);
    // Every pack: each names at least one entry, and together they name both files.
    let mut found = Vec::new();
    let mut one_blob = None;
    for pack in env.objects("packs") {
        let id = file_name(&pack);
        let r = env
            .coffer()
            .args(["--json", "find", "--pack", &id[..12]])
            .run()
            .ok();
        for l in r.stdout.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            if v["message_type"] == "match" {
                let path = v["path"].as_str().unwrap().to_string();
                let id = v["id"].as_str().unwrap_or_else(|| panic!("no id: {v}"));
                if path.ends_with("one.bin") {
                    one_blob = Some(id.to_string());
                }
                found.push(path);
            }
        }
    }
    let root = t.root.display().to_string();
    for f in ["a/one.bin", "b/two.bin"] {
        assert!(
            found.contains(&format!("{root}/{f}")),
            "{f} not in {found:?}"
        );
    }
    // The directories' trees are in a pack too: --pack finds them as dirs.
    assert!(found.contains(&format!("{root}/a")), "{found:?}");

    // The blob id `find` printed finds that file and no other.
    let blob = one_blob.expect("one.bin was found");
    let out = env
        .coffer()
        .args(["find", "--blob", &blob[..16]])
        .run()
        .ok()
        .stdout;
    let paths: Vec<&str> = out.lines().filter(|l| l.starts_with('/')).collect();
    assert_eq!(paths.len(), 1, "{out}");
    assert!(
        paths[0].starts_with(&format!("{root}/a/one.bin  (blob ")),
        "{out}"
    );
    env.coffer()
        .args(["find", "--pack", "zz"])
        .run()
        .expect_code(1)
        .stderr_has("not a hex id");
}

#[test]
fn stats_counts_restore_size_and_distinct_stored_data() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    let model = Rng::new(5).bytes(400_000);
    t.file("m/model.bin", &model);
    t.file("m/copy.bin", &model);
    t.file("notes.txt", &b"note\n".repeat(10_000));
    t.symlink("link", "notes.txt");
    env.backup_json(&[&t.root], &[]);
    env.backup_json(&[&t.root], &[]);

    let v = env.coffer().args(["--json", "stats"]).run().ok().json();
    let per = 400_000 * 2 + 50_000;
    assert_eq!(v["mode"], "restore-size");
    assert_eq!(v["snapshots_count"], 2);
    assert_eq!(v["total_size"], 2 * per);
    assert_eq!(v["files"], 2 * 3);
    assert_eq!(v["others"], 2);
    let v = env
        .coffer()
        .args(["--json", "stats", "latest"])
        .run()
        .ok()
        .json();
    assert_eq!(v["total_size"], per);

    // Distinct data: the model once, the notes once, however many copies.
    let v = env
        .coffer()
        .args(["--json", "stats", "--mode", "raw-data"])
        .run()
        .ok()
        .json();
    let raw = num(&v, "total_uncompressed_size");
    let trees = num(&v, "tree_blobs");
    assert!(trees >= 3, "{v}");
    assert!(
        (400_000 + 50_000..400_000 + 50_000 + 64 * 1024).contains(&raw),
        "raw size {raw}: the data once plus the trees\n{v}"
    );
    let stored = num(&v, "total_size");
    assert!(stored < raw, "the notes compress: {v}");
    assert!(v["compression_ratio"].as_f64().unwrap() > 1.0);
    assert_eq!(v["repository"]["unreferenced_bytes"], 0, "{v}");
    let packs_on_disk: u64 = env
        .objects("packs")
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(num(&v["repository"], "pack_bytes"), packs_on_disk);

    // The human form says the same.
    let out = env
        .coffer()
        .args(["stats", "--mode", "raw-data"])
        .run()
        .ok()
        .stdout;
    assert!(out.contains("Stats in raw-data mode:"), "{out}");
    assert!(out.contains("Compression Ratio:"), "{out}");

    // Filters that match nothing count nothing; `latest` with none is an error.
    let v = env
        .coffer()
        .args(["--json", "stats", "--host", "no-such-host"])
        .run()
        .ok()
        .json();
    assert_eq!(v["snapshots_count"], 0);
    env.coffer()
        .args(["stats", "latest", "--host", "no-such-host"])
        .run()
        .expect_code(1)
        .stderr_has("no snapshot matches");
}
