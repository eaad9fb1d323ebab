//! The layer map in `src/lib.rs` is a rule, not a picture: this reads the
//! map and every `crate::` path in the library's sources, and fails when a
//! module uses one from a higher layer, or when a module is missing from the
//! map. Test modules (`#[cfg(test)] mod …`) may reach anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Module name → layer number, from the ```text block of lib.rs's docs.
fn layer_map(lib: &str) -> BTreeMap<String, u32> {
    let mut map = BTreeMap::new();
    let mut layer = None;
    let block = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .skip_while(|l| l.trim() != "```text")
        .skip(1)
        .take_while(|l| l.trim() != "```");
    for line in block {
        let names = line.split('#').next().unwrap_or("");
        let mut words = names.split_whitespace().peekable();
        if let Some(n) = words.peek().and_then(|w| w.strip_prefix('L')) {
            layer = Some(n.parse::<u32>().expect("layer number after L"));
            words.next();
        }
        for w in words {
            let l = layer.expect("a module listed before the first layer");
            assert!(
                map.insert(w.to_string(), l).is_none(),
                "{w} is on the map twice"
            );
        }
    }
    map
}

/// The library's source without comments and without test modules.
fn code_of(text: &str) -> String {
    let body = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    };
    body.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every top-level module a source file names through `crate::`, including
/// grouped imports such as `use crate::{id::Id, blob::BlobKind}`.
fn used_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            out.extend(top_level_items(group));
        } else {
            out.push(leading_ident(rest));
        }
    }
    out
}

fn leading_ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The first name of each item of a `{…}` group, up to its closing brace:
/// `id::Id, blob::{Blob, Kind}}` → id, blob.
fn top_level_items(group: &str) -> Vec<String> {
    let mut items = vec![leading_ident(group)];
    let mut depth = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => items.push(leading_ident(&group[i + 1..])),
            _ => {}
        }
    }
    items.retain(|s| !s.is_empty());
    items
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to (`src/index/segment.rs` → index).
fn owner(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_string()
}

fn violations(map: &BTreeMap<String, u32>) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut bad = Vec::new();
    for f in files {
        let module = owner(&f);
        // The binary's own `crate::` is the binary, and lib.rs only declares.
        if matches!(module.as_str(), "main" | "cli" | "lib") {
            continue;
        }
        let Some(&mine) = map.get(&module) else {
            bad.push(format!("{module} ({}) is not on the map", f.display()));
            continue;
        };
        let code = code_of(&std::fs::read_to_string(&f).unwrap());
        for used in used_modules(&code) {
            match map.get(&used) {
                Some(&theirs) if theirs > mine => bad.push(format!(
                    "{} (L{mine} {module}) uses crate::{used} from L{theirs}",
                    f.display()
                )),
                Some(_) => {}
                None if used == "Error" || used == "Result" => {}
                None => bad.push(format!("{}: crate::{used} is not on the map", f.display())),
            }
        }
    }
    bad
}

#[test]
fn no_module_uses_a_higher_layer() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let map = layer_map(&lib);
    let bad = violations(&map);
    assert!(bad.is_empty(), "layer violations:\n{}", bad.join("\n"));
}

#[test]
fn every_module_of_the_library_is_on_the_map() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let map = layer_map(&lib);
    for line in lib.lines() {
        if let Some(m) = line.trim().strip_prefix("pub mod ") {
            let m = m.trim_end_matches(';');
            assert!(
                map.contains_key(m),
                "module {m} is not on lib.rs's layer map"
            );
        }
    }
}

/// The guard must be able to fail: a map that puts `pack` above
/// `repository` turns repository's real imports into violations.
#[test]
fn a_module_reaching_up_is_caught() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut map = layer_map(&lib);
    map.insert("pack".into(), 5);
    let bad = violations(&map);
    assert!(
        bad.iter().any(|b| b.contains("uses crate::pack from L5")),
        "{bad:?}"
    );
    assert_eq!(
        used_modules("use crate::{id::Id, blob::{Blob, Kind}};\nx = crate::pack::P;"),
        ["id", "blob", "pack"]
    );
}
