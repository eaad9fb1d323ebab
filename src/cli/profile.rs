//! Profiles: named sets of options in a TOML file
//! (`$XDG_CONFIG_HOME/coffer/config.toml`, or `--config FILE`), chosen with
//! `-P NAME`. Keys are the long flags' names. Precedence, as in restic and
//! rustic: a flag beats its environment variable, which beats the profile,
//! which beats the default. Two groups are taken whole: the secret
//! (key-file, password-file, password-command and `COFFER_PASSWORD`) and
//! what to back up (sources, files-from, stdin-from-command): naming either
//! outside the profile drops the profile's part of that group, so a flag
//! never combines with the profile into something neither asked for.
//!
//! The file is read only when `-P` is given: without it nothing changes.

use super::commands::backup::BackupArgs;
use super::commands::forget::ForgetArgs;
use super::{Cli, Command, GlobalOpts};
use anyhow::{Result, anyhow, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One `[profiles.NAME]` table. Unknown keys are refused.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Profile {
    pub repository: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    pub password_command: Option<String>,
    pub key_file: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub option: Option<Vec<String>>,
    pub wait_lock: Option<String>,
    pub metrics_file: Option<PathBuf>,
    // backup
    pub sources: Option<Vec<PathBuf>>,
    pub files_from: Option<Vec<PathBuf>>,
    pub stdin_from_command: Option<Vec<String>>,
    pub stdin_name: Option<String>,
    #[serde(alias = "tags")]
    pub tag: Option<Vec<String>>,
    pub host: Option<String>,
    pub exclude: Option<Vec<String>>,
    pub iexclude: Option<Vec<String>>,
    pub exclude_file: Option<Vec<PathBuf>>,
    pub iexclude_file: Option<Vec<PathBuf>>,
    pub exclude_caches: Option<bool>,
    pub exclude_if_present: Option<Vec<String>>,
    pub exclude_larger_than: Option<String>,
    pub one_file_system: Option<bool>,
    // forget
    pub keep_last: Option<i64>,
    pub keep_hourly: Option<i64>,
    pub keep_daily: Option<i64>,
    pub keep_weekly: Option<i64>,
    pub keep_monthly: Option<i64>,
    pub keep_yearly: Option<i64>,
    pub keep_within: Option<String>,
    pub keep_tag: Option<Vec<String>>,
    pub group_by: Option<String>,
    pub max_unused: Option<String>,
    // run
    pub prune_every: Option<String>,
    pub copy_to: Option<PathBuf>,
    pub copy_to_password_file: Option<PathBuf>,
    pub copy_to_password_command: Option<String>,
    pub copy_to_key_file: Option<PathBuf>,
    pub check_subset: Option<String>,
    // hooks
    pub before_backup: Option<String>,
    pub after_backup: Option<String>,
    pub on_failure: Option<String>,
}

impl Profile {
    /// Does the profile give a keep rule, so that `run` forgets?
    pub fn has_keep_rules(&self) -> bool {
        [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ]
        .iter()
        .any(Option::is_some)
            || self.keep_within.is_some()
            || self.keep_tag.is_some()
    }
}

/// A profile as loaded: its name and the file it came from.
#[derive(Debug)]
pub struct Loaded {
    pub name: String,
    pub file: PathBuf,
    pub p: Profile,
}

/// The profile in use (if any) and where each global setting came from.
#[derive(Debug, Default)]
pub struct Applied {
    pub profile: Option<Loaded>,
    pub globals: Vec<Setting>,
}

/// Where a setting in force came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Flag,
    Env(String),
    Profile,
    Default,
}

/// One setting in force, for `config show`.
#[derive(Debug, Clone)]
pub struct Setting {
    pub key: &'static str,
    pub value: serde_json::Value,
    pub source: Source,
}

/// The config file: `--config`, `COFFER_CONFIG`, else the XDG default.
pub fn config_path(g: &GlobalOpts) -> Result<PathBuf> {
    match &g.config {
        Some(p) => Ok(p.clone()),
        None => super::repo::default_config_file(),
    }
}

/// Read the profile `name` from `file`. Only that profile is checked: a
/// mistake in another one must not stop tonight's backup.
pub fn load(file: &Path, name: &str) -> Result<Loaded> {
    let text = std::fs::read_to_string(file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!(
            "profile {name:?}: the config file {} does not exist (create it, or give --config FILE)",
            file.display()
        ),
        _ => anyhow!("cannot read config file {}: {e}", file.display()),
    })?;
    refuse_writable_by_others(file)?;
    let at = file.display();
    let doc: toml::Table = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        match line {
            Some(l) => anyhow!("{at}: line {l}: {}", one_line(e.message())),
            None => anyhow!("{at}: {}", one_line(e.message())),
        }
    })?;
    if let Some(k) = doc.keys().find(|k| *k != "profiles") {
        bail!("{at}: unknown top-level key {k:?}: settings go in [profiles.NAME] tables");
    }
    let profiles = match doc.get("profiles") {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t.clone(),
        Some(_) => bail!("{at}: `profiles` must be tables: [profiles.NAME]"),
    };
    let Some(v) = profiles.get(name) else {
        let have: Vec<&str> = profiles.keys().map(String::as_str).collect();
        bail!(
            "profile {name:?} is not in {at} ({})",
            if have.is_empty() {
                "it has no [profiles.NAME] table".to_string()
            } else {
                format!("it has: {}", have.join(", "))
            }
        );
    };
    let toml::Value::Table(t) = v else {
        bail!("{at}: profiles.{name} must be a table: [profiles.{name}]");
    };
    let p = parse_profile(t).map_err(|e| anyhow!("{at}: profile {name:?}: {e}"))?;
    Ok(Loaded {
        name: name.to_string(),
        file: file.to_path_buf(),
        p,
    })
}

/// A profile names commands coffer runs (hooks, password-command): a file
/// others can change would let them run theirs as this user.
fn refuse_writable_by_others(file: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file)
        .map_err(|e| anyhow!("cannot read config file {}: {e}", file.display()))?
        .permissions()
        .mode();
    if mode & 0o022 != 0 {
        bail!(
            "config file {} can be changed by other users, and it names commands coffer runs: run `chmod go-w {}`",
            file.display(),
            file.display()
        );
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Key by key, so that an error names the key it is about.
fn parse_profile(t: &toml::Table) -> Result<Profile> {
    let known = known_keys();
    for (k, v) in t {
        if !known.contains(&k.as_str()) {
            return Err(match closest(k, known) {
                Some(c) => anyhow!("unknown key {k:?} (did you mean {c:?}?)"),
                None => anyhow!("unknown key {k:?} (the keys are the long flags' names)"),
            });
        }
        let mut one = toml::Table::new();
        one.insert(k.clone(), v.clone());
        one.try_into::<Profile>()
            .map_err(|e| anyhow!("{k}: {}", one_line(e.message())))?;
    }
    let mut p: Profile = t
        .clone()
        .try_into()
        .map_err(|e| anyhow!("{}", one_line(e.message())))?;
    if p.stdin_from_command.is_some() && (p.sources.is_some() || p.files_from.is_some()) {
        bail!(
            "stdin-from-command and sources/files-from: a backup reads either a command's output or files; make two profiles"
        );
    }
    if p.stdin_from_command.as_ref().is_some_and(Vec::is_empty) {
        bail!("stdin-from-command: give the command and its arguments, e.g. [\"pg_dumpall\"]");
    }
    if let Some(s) = &p.prune_every {
        prune_every(s).map_err(|e| anyhow!("prune-every: {e}"))?;
    }
    if let Some(s) = &p.check_subset {
        check_subset(s, 0).map_err(|e| anyhow!("check-subset: {e}"))?;
    }
    expand_home(&mut p);
    Ok(p)
}

/// The field names serde accepts for [`Profile`].
fn known_keys() -> &'static [&'static str] {
    use serde::de::{self, Visitor};
    struct Grab(&'static [&'static str]);
    impl<'de> de::Deserializer<'de> for &mut Grab {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(de::Error::custom("fields taken"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut g = Grab(&[]);
    let _ = Profile::deserialize(&mut g);
    g.0
}

/// The known key nearest to a misspelt one, if it is near.
fn closest(k: &str, known: &[&'static str]) -> Option<&'static str> {
    let dist = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    };
    known
        .iter()
        .map(|c| (dist(k, c), *c))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, c)| c)
}

/// `~/` at the start of a path is the home directory (a systemd unit runs
/// without a shell to expand it).
fn expand_home(p: &mut Profile) {
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        return;
    };
    let one = |x: &mut PathBuf| {
        if let Ok(rest) = x.strip_prefix("~") {
            *x = home.join(rest);
        }
    };
    for x in [
        &mut p.repository,
        &mut p.password_file,
        &mut p.key_file,
        &mut p.cache_dir,
        &mut p.metrics_file,
        &mut p.copy_to,
        &mut p.copy_to_password_file,
        &mut p.copy_to_key_file,
    ]
    .into_iter()
    .flatten()
    {
        one(x);
    }
    for list in [
        &mut p.sources,
        &mut p.files_from,
        &mut p.exclude_file,
        &mut p.iexclude_file,
    ]
    .into_iter()
    .flatten()
    {
        list.iter_mut().for_each(one);
    }
}

/// When `run` prunes after forgetting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PruneEvery {
    Always,
    Never,
    /// At most once in this many seconds.
    Secs(i64),
}

pub fn prune_every(s: &str) -> Result<PruneEvery, String> {
    match s {
        "always" => Ok(PruneEvery::Always),
        "never" => Ok(PruneEvery::Never),
        _ => coffer::retention::policy::parse_duration(s)
            .map(|ns| PruneEvery::Secs(ns / 1_000_000_000))
            .map_err(|e| format!("{e}; or \"always\", \"never\"")),
    }
}

/// `check-subset` as `check --read-data-subset` takes it. `rotate/M` reads
/// slice (day number mod M) + 1 of M, so M consecutive nightly runs read
/// every pack once.
pub fn check_subset(s: &str, unix_day: u64) -> Result<String, String> {
    let resolved = match s.strip_prefix("rotate/") {
        Some(m) => {
            let m: u64 = m
                .trim()
                .parse()
                .ok()
                .filter(|m| *m > 0)
                .ok_or_else(|| format!("{s:?}: rotate/M needs M of 1 or more"))?;
            format!("{}/{m}", unix_day % m + 1)
        }
        None => s.to_string(),
    };
    coffer::check::ReadData::parse_subset(&resolved)?;
    Ok(resolved)
}

/// Fill the options of `cli` that no flag or environment variable set from
/// the profile `-P` names, and record where each global setting came from.
pub fn apply(cli: &mut Cli, m: &ArgMatches) -> Result<()> {
    let mut applied = Applied::default();
    let root = Cli::command();
    let loaded = match &cli.global.profile {
        Some(name) => Some(load(&config_path(&cli.global)?, name)?),
        None => {
            if m.value_source("config") == Some(ValueSource::CommandLine) {
                bail!("--config names the file of profiles: give -P NAME too");
            }
            None
        }
    };
    if m.value_source("metrics_file") == Some(ValueSource::CommandLine)
        && !matches!(cli.command, Command::Backup(_) | Command::Run(_))
    {
        bail!("--metrics-file: only backup and run write metrics");
    }
    let empty = Profile::default();
    let p = loaded.as_ref().map_or(&empty, |l| &l.p);
    let mut fill = Fill::new(m, &root, p);
    fill.global(&mut cli.global);
    applied.globals = fill.shown;
    if let Some((name, sm)) = m.subcommand()
        && let Some(sub) = root.find_subcommand(name)
    {
        let mut fill = Fill::new(sm, sub, p);
        match &mut cli.command {
            Command::Backup(a) => fill.backup(a),
            Command::Forget(a) => fill.forget(a),
            _ => {}
        }
    }
    applied.profile = loaded;
    cli.global.settings = std::sync::Arc::new(applied);
    Ok(())
}

/// Command `name`'s arguments as `args` give them, with their defaults;
/// for the steps of `run`, which no command line names.
pub fn parse_args<A: clap::Args + clap::FromArgMatches>(
    name: &'static str,
    args: &[&str],
) -> Result<(A, ArgMatches, clap::Command)> {
    let cmd = A::augment_args(clap::Command::new(name));
    let m = cmd
        .clone()
        .try_get_matches_from(std::iter::once(name).chain(args.iter().copied()))?;
    Ok((A::from_arg_matches(&m)?, m, cmd))
}

/// The backup and forget settings a profile gives (no flag can set them
/// where `run` and `config show` use them).
pub fn job_settings(p: &Profile) -> Result<Vec<Setting>> {
    let (mut b, m, cmd) = parse_args::<BackupArgs>("backup", &[])?;
    let mut fill = Fill::new(&m, &cmd, p);
    fill.backup(&mut b);
    let (mut f, m, cmd) = parse_args::<ForgetArgs>("forget", &[])?;
    let mut forget = Fill::new(&m, &cmd, p);
    forget.forget(&mut f);
    fill.shown.extend(forget.shown);
    for (key, v) in [
        ("prune-every", &p.prune_every),
        (
            "copy-to",
            &p.copy_to.as_ref().map(|x| x.display().to_string()),
        ),
        (
            "copy-to-password-file",
            &p.copy_to_password_file
                .as_ref()
                .map(|x| x.display().to_string()),
        ),
        ("copy-to-password-command", &p.copy_to_password_command),
        (
            "copy-to-key-file",
            &p.copy_to_key_file.as_ref().map(|x| x.display().to_string()),
        ),
        ("check-subset", &p.check_subset),
        ("before-backup", &p.before_backup),
        ("after-backup", &p.after_backup),
        ("on-failure", &p.on_failure),
    ] {
        fill.shown.push(Setting {
            key,
            value: v.clone().map_or(serde_json::Value::Null, Into::into),
            source: if v.is_some() {
                Source::Profile
            } else {
                Source::Default
            },
        });
    }
    Ok(fill.shown)
}

/// The profile's backup arguments, for `run`.
pub fn backup_args(p: &Profile) -> Result<BackupArgs> {
    let (mut a, m, cmd) = parse_args::<BackupArgs>("backup", &[])?;
    Fill::new(&m, &cmd, p).backup(&mut a);
    Ok(a)
}

/// The profile's forget arguments, for `run`.
pub fn forget_args(p: &Profile) -> Result<ForgetArgs> {
    let (mut a, m, cmd) = parse_args::<ForgetArgs>("forget", &[])?;
    Fill::new(&m, &cmd, p).forget(&mut a);
    Ok(a)
}

/// Fills one command's options from a profile where the command line and
/// the environment left them unset.
struct Fill<'a> {
    m: &'a ArgMatches,
    cmd: &'a clap::Command,
    p: &'a Profile,
    shown: Vec<Setting>,
}

impl<'a> Fill<'a> {
    fn new(m: &'a ArgMatches, cmd: &'a clap::Command, p: &'a Profile) -> Self {
        Fill {
            m,
            cmd,
            p,
            shown: Vec::new(),
        }
    }

    /// Flag or environment, if either gave the option `id`.
    fn given(&self, id: &str) -> Option<Source> {
        match self.m.value_source(id) {
            Some(ValueSource::CommandLine) => Some(Source::Flag),
            Some(ValueSource::EnvVariable) => {
                let var = self
                    .cmd
                    .get_arguments()
                    .find(|a| a.get_id() == id)
                    .and_then(|a| a.get_env())
                    .map(|v| v.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Some(Source::Env(var))
            }
            _ => None,
        }
    }

    /// Set the option named `key` (its clap id the same with `_`).
    fn set<T: Serialize>(&mut self, key: &'static str, field: &mut T, p: Option<T>) {
        self.set_as(key, &key.replace('-', "_"), field, p);
    }

    /// Set option `id` from the profile's `key`, unless a flag or the
    /// environment gave it; record where the value in force came from.
    fn set_as<T: Serialize>(&mut self, key: &'static str, id: &str, field: &mut T, p: Option<T>) {
        let source = match (self.given(id), p) {
            (Some(s), _) => s,
            (None, Some(v)) => {
                *field = v;
                Source::Profile
            }
            (None, None) => Source::Default,
        };
        let value = serde_json::to_value(&*field).unwrap_or(serde_json::Value::Null);
        self.shown.push(Setting { key, value, source });
    }

    fn global(&mut self, g: &mut GlobalOpts) {
        let p = self.p;
        self.set_as(
            "repository",
            "repo",
            &mut g.repo,
            p.repository.clone().map(Some),
        );
        // The secret is one setting: a flag or variable for any part of it
        // replaces the profile's.
        let password_env = std::env::var_os("COFFER_PASSWORD").is_some();
        let secret_given = password_env
            || ["key_file", "password_file", "password_command"]
                .iter()
                .any(|id| self.given(id).is_some());
        let pick = |v: &Option<PathBuf>| v.clone().filter(|_| !secret_given).map(Some);
        self.set("key-file", &mut g.key_file, pick(&p.key_file));
        self.set(
            "password-file",
            &mut g.password_file,
            pick(&p.password_file),
        );
        let cmd = p
            .password_command
            .clone()
            .filter(|_| !secret_given)
            .map(Some);
        self.set("password-command", &mut g.password_command, cmd);
        if password_env {
            self.shown.push(Setting {
                key: "password",
                value: "(set)".into(),
                source: Source::Env("COFFER_PASSWORD".into()),
            });
        }
        self.set("cache-dir", &mut g.cache_dir, p.cache_dir.clone().map(Some));
        self.set_as("option", "options", &mut g.options, p.option.clone());
        self.set("wait-lock", &mut g.wait_lock, p.wait_lock.clone().map(Some));
        let metrics = p.metrics_file.clone().map(Some);
        self.set("metrics-file", &mut g.metrics_file, metrics);
    }

    fn backup(&mut self, a: &mut BackupArgs) {
        let p = self.p;
        // What to back up is one setting too.
        let what_given = [
            "paths",
            "files_from",
            "files_from_verbatim",
            "files_from_raw",
            "stdin",
            "stdin_from_command",
        ]
        .iter()
        .any(|id| self.given(id).is_some());
        let take = |v: &Option<Vec<PathBuf>>| v.clone().filter(|_| !what_given);
        match p.stdin_from_command.clone().filter(|_| !what_given) {
            Some(argv) => {
                let argv: Vec<PathBuf> = argv.into_iter().map(PathBuf::from).collect();
                self.set("stdin-from-command", &mut a.stdin_from_command, Some(true));
                self.set_as("sources", "paths", &mut a.paths, Some(argv));
            }
            None => {
                self.set_as("sources", "paths", &mut a.paths, take(&p.sources));
                self.set("files-from", &mut a.files_from, take(&p.files_from));
            }
        }
        self.set("stdin-name", &mut a.stdin_name, p.stdin_name.clone());
        self.set_as("tag", "tags", &mut a.tags, p.tag.clone());
        self.set("host", &mut a.host, p.host.clone().map(Some));
        self.set("exclude", &mut a.exclude, p.exclude.clone());
        self.set("iexclude", &mut a.iexclude, p.iexclude.clone());
        self.set("exclude-file", &mut a.exclude_file, p.exclude_file.clone());
        self.set(
            "iexclude-file",
            &mut a.iexclude_file,
            p.iexclude_file.clone(),
        );
        self.set("exclude-caches", &mut a.exclude_caches, p.exclude_caches);
        let present = p.exclude_if_present.clone();
        self.set("exclude-if-present", &mut a.exclude_if_present, present);
        let larger = p.exclude_larger_than.clone().map(Some);
        self.set("exclude-larger-than", &mut a.exclude_larger_than, larger);
        self.set("one-file-system", &mut a.one_file_system, p.one_file_system);
    }

    fn forget(&mut self, a: &mut ForgetArgs) {
        let p = self.p;
        self.set("keep-last", &mut a.keep_last, p.keep_last);
        self.set("keep-hourly", &mut a.keep_hourly, p.keep_hourly);
        self.set("keep-daily", &mut a.keep_daily, p.keep_daily);
        self.set("keep-weekly", &mut a.keep_weekly, p.keep_weekly);
        self.set("keep-monthly", &mut a.keep_monthly, p.keep_monthly);
        self.set("keep-yearly", &mut a.keep_yearly, p.keep_yearly);
        self.set(
            "keep-within",
            &mut a.keep_within,
            p.keep_within.clone().map(Some),
        );
        self.set("keep-tag", &mut a.keep_tag, p.keep_tag.clone());
        self.set("group-by", &mut a.group_by, p.group_by.clone());
        let unused = p.max_unused.clone();
        self.set("max-unused", &mut a.prune_args.max_unused, unused);
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag => write!(f, "flag"),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Profile => write!(f, "profile"),
            Source::Default => write!(f, "default"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_known_and_misspellings_are_caught() {
        assert!(known_keys().contains(&"keep-daily"));
        assert!(known_keys().contains(&"before-backup"));
        assert_eq!(closest("keep-dayly", known_keys()), Some("keep-daily"));
        assert_eq!(closest("zzzzzzzzzzzz", known_keys()), None);
    }

    #[test]
    fn rotating_check_slices_cover_every_slice() {
        let got: Vec<String> = (0..3)
            .map(|d| check_subset("rotate/3", d).unwrap())
            .collect();
        assert_eq!(got, ["1/3", "2/3", "3/3"]);
        assert_eq!(check_subset("1/30", 7).unwrap(), "1/30");
        assert!(check_subset("rotate/0", 1).is_err());
        assert!(check_subset("31/30", 1).is_err());
    }

    #[test]
    fn prune_every_values() {
        assert_eq!(prune_every("7d"), Ok(PruneEvery::Secs(7 * 86_400)));
        assert_eq!(prune_every("never"), Ok(PruneEvery::Never));
        assert!(prune_every("weekly").is_err());
    }
}
