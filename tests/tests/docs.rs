//! The README's event table is the contract consumers (jq recipes, notify's
//! routing, dashboards) read: every event a tool emits is listed there, and
//! every event listed is one some tool emits.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Crates whose sources name events they consume (notify's routing table,
/// test helpers): only their literal `.emit(` calls count as producing.
const CONSUMERS: &[&str] = &["notify", "testkit", "tests"];

/// Library and binary sources of the workspace, unit-test modules cut off.
fn sources(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if p.is_dir() {
                if !(name.starts_with('.') || name == "target" || name == "node_modules") {
                    stack.push(p);
                }
            } else if name.ends_with(".rs") && p.components().any(|c| c.as_os_str() == "src") {
                let text = fs::read_to_string(&p).unwrap_or_default();
                let code = match text.find("#[cfg(test)]\nmod tests") {
                    Some(i) => text[..i].to_string(),
                    None => text,
                };
                out.push((p, code));
            }
        }
    }
    out
}

fn crate_of(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .ok()
        .and_then(|r| r.components().next())
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .unwrap_or_default()
}

/// Event names passed literally as the first argument of `.emit(`.
fn emitted_literally(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(".emit(") {
        rest = &rest[i + ".emit(".len()..];
        let arg = rest.trim_start();
        if let Some(lit) = arg.strip_prefix('"') {
            if let Some(end) = lit.find('"') {
                names.push(lit[..end].to_string());
            }
        }
    }
    names
}

/// The event names in the README's table (`## Events` up to the jq recipes).
fn readme_events(readme: &str) -> BTreeSet<String> {
    let start = readme
        .find("## Events")
        .expect("README has an Events section");
    let end = readme[start..]
        .find("### jq recipes")
        .map_or(readme.len(), |e| start + e);
    readme[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_string))
        .filter(|n| n.contains('.') && !n.contains(' '))
        .collect()
}

#[test]
fn readme_event_table_matches_the_events_the_tools_emit() {
    let root = testkit::workspace_root();
    let readme = fs::read_to_string(root.join("README.md")).expect("README.md");
    let table = readme_events(&readme);
    assert!(table.len() > 50, "the table parsed to {table:?}");
    let srcs = sources(&root);

    let mut missing = BTreeSet::new();
    for (path, code) in &srcs {
        for name in emitted_literally(code) {
            if !table.contains(&name) {
                missing.insert(format!("{name} ({})", path.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "emitted but missing from the README's event table: {missing:#?}"
    );

    // Names built at run time (gate.<status>, migrate.<direction>) are still
    // written as literals somewhere in the producing crate.
    let producers: Vec<&String> = srcs
        .iter()
        .filter(|(p, _)| !CONSUMERS.contains(&crate_of(&root, p).as_str()))
        .map(|(_, c)| c)
        .collect();
    let literal: BTreeSet<String> = srcs
        .iter()
        .flat_map(|(_, c)| emitted_literally(c))
        .collect();
    let stale: Vec<&String> = table
        .iter()
        .filter(|name| {
            let lit = format!("\"{name}\"");
            !literal.contains(*name) && !producers.iter().any(|c| c.contains(&lit))
        })
        .collect();
    assert!(
        stale.is_empty(),
        "listed in the README's event table, but no tool emits them: {stale:?}"
    );
}
