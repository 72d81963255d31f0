//! Source comments cite documents a reader can open: a comment that names a
//! design file the repository does not hold sends a newcomer nowhere.

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn comments_cite_only_documents_in_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Built from parts so this file does not cite it itself.
    let design = ["DESIGN", ".md"].concat();
    if root.join(&design).exists() {
        return;
    }
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let citing: Vec<String> = files
        .iter()
        .filter(|f| fs::read_to_string(f).is_ok_and(|t| t.contains(&design)))
        .map(|f| f.strip_prefix(&root).unwrap_or(f).display().to_string())
        .collect();
    assert!(
        citing.is_empty(),
        "{design} is not in the repository, yet these files cite it (cite a README section or state the rule): {citing:?}"
    );
}
