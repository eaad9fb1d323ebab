//! coffer's end-to-end tests: one test binary that runs the real `coffer`
//! executable against temporary repositories (doc/reliability.md section 4).

// Environment, fixture builder, tree comparison and other shared helpers.
mod support;

// Full backup/restore round trips of awkward trees, plus ls, snapshots and cat output.
mod backup_restore;
// Deduplication and change detection as reported by `backup --json` and seen on disk.
mod dedup;
// Command-line behaviour: zero-config repository, password sources, exit codes and messages.
mod cli;
// Damaged repositories: corrupt packs, snapshots and index objects fail clearly, never panic.
mod errors;
// The frozen format-v1 repository opens and restores byte for byte (the compatibility promise).
mod format_vectors;
// Tampering with every object kind (flip, truncate, append, swap): detected, named, exit 1, never restored wrong.
mod tamper;
// Key management: list, add, remove, passwd, export; key files 0600 and refused when others can read them.
mod keys;
// Crash safety: backup, prune and forget killed at each object write or deletion lose nothing.
mod crash;
// Hostile snapshots crafted with the repository key: restore never writes outside the target.
mod hostile;
// Retention: forget policies and explanations, forget by id, prune (delete, repack, dry run, refusals).
mod retention;
// Profiles (issue 23): config.toml precedence and errors, hooks, `coffer run`, the metrics file, `config show`.
mod profiles;
// Locks: concurrent backups, prune against a running backup, stale and unreadable locks, SIGSTOP past the timeout.
mod locks;
// Streams from stdin and commands, and backup exclude rules (issue #8).
mod sources;
// Repair: index rebuilt from packs, lost packs named and repaired around, lost content stored again.
mod repair;
// Tar archives: import-tar (plain, gzip, zstd; hostile and truncated archives) and export-tar.
mod tar;
// Offsite copies: init --from-repo, copy (incremental, killed, damaged source, refusals).
mod replicate;
// Reading snapshots without restoring them: diff, find and stats.
mod inspect;
// Restore when things go wrong: damaged trees, directories it cannot make, closed pipes, stale metadata, little space, signals.
mod restore_edges;
// Real programs as sources: a PostgreSQL server dumped day after day, a log appended during the backup, a file deleted mid-backup.
mod realsources;
// The layer map in src/lib.rs, enforced on every `crate::` path of the library.
mod architecture;
// The README's nightly jobs run for real (issue 18): remote-looking locations, empty dumps, the repository left out of its own backups, times, `latest` narrowed, progress.
mod nightly;
// Repository layer under nightly jobs and a fault campaign (issues 18, 19): leftovers adopted in bounded memory, truncated packs, hostile locks/links/objects, dead locks, sparse files.
mod repolayer;
// Every command, the backend contract and a crash-matrix sample against a real S3 server (COFFER_TEST_S3).
mod s3;
// S3 retries against a fault-injecting proxy in front of the real server (COFFER_TEST_S3): 500, SlowDown, cut bodies, held and lost answers.
mod s3faults;
// `coffer mount` through the kernel (when /dev/fuse and fusermount3 are there): the layout, trees, byte ranges, read-only, signals, damage.
mod mount;
