//! The release bundle an operator means when no bundle folder is named:
//! shared by `deploy_dhash` and `migrate_dhash`, so both act on the same
//! release.
//!
//! - **No tag: the checkout's release.** The project root's bundle is
//!   `dist/dhash-v<workspace version>-<short commit>/`. When it exists it is
//!   reused (a bundle of that very commit); otherwise it is built. A work
//!   tree whose bundle inputs (`Cargo.toml`, `Cargo.lock`, `dhash-service/`,
//!   `gates-core/`) differ from the commit gets the suffix `-dirty` and is
//!   rebuilt on every run, so a bundle of the clean commit is never taken for
//!   it; a root that is not a git checkout gets `-local`, rebuilt likewise.
//! - **`--tag T`:** `dist/dhash-T/` when it exists; else, when `T` is a git
//!   tag of the checkout, the bundle is built from that tag's tree (`git
//!   archive T`, extracted into a temporary folder that is removed
//!   afterwards; the checkout itself when `T` is its clean HEAD); else a
//!   usage error (exit 2) naming both ways to get a bundle, before anything
//!   changed.
//! - **The service binary bundled:** when the tree is a cargo checkout, cargo
//!   is installed and `DHASH_NO_BUILD` is not `1`, `cargo build --bin
//!   dhash-service` of that tree, in the profile and target folder of the
//!   running tool (`target/<profile>/`), cargo's output on stderr. Otherwise
//!   the `dhash-service` beside the running tool, with the tree's
//!   `dhash-service/migrations/` when it has one.
//! - **Plans (`--dry-run`)** never write outside the target folder: a bundle
//!   that has to be built for a plan goes into a temporary folder (under the
//!   system's temp dir) that lives as long as the [`Resolved`] value.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, Context};
use gates_core::exit::usage_error;
use gates_core::project::Project;
use gates_core::Emitter;

use crate::release::{available_tags, bundle_for_tag, Bundle, BUNDLE_PREFIX, MANIFEST};

/// Paths of a checkout whose changes change its release bundle.
pub const BUNDLE_INPUTS: &[&str] = &["Cargo.toml", "Cargo.lock", "dhash-service", "gates-core"];

/// `DHASH_NO_BUILD=1`: never run cargo (use the binaries already built).
pub const NO_BUILD_VAR: &str = "DHASH_NO_BUILD";

/// A bundle found or built for the operator's request.
#[derive(Debug)]
pub struct Resolved {
    pub bundle: Bundle,
    /// How it was chosen or built, in words (for stderr and events).
    pub how: String,
    /// Whether this run built it.
    pub built: bool,
    /// Holds a plan's bundle folder until the plan is done.
    _scratch: Option<tempfile::TempDir>,
}

/// Finds or builds the bundle of `tag` (or of the checkout when `None`).
/// `plan`: a dry run, which writes nothing outside temporary folders.
pub fn resolve(
    project: &Project,
    tag: Option<&str>,
    plan: bool,
    em: &Emitter,
) -> anyhow::Result<Resolved> {
    match tag {
        Some(t) => resolve_tag(project, t, plan, em),
        None => resolve_checkout(project, plan, em),
    }
}

/// A tag as `dhash-service bundle` accepts it (checked here too: a tag is
/// passed to git, and must never read as an option).
pub fn validate_tag(tag: &str) -> anyhow::Result<()> {
    gates_core::release::validate_tag(tag).map_err(usage_error)
}

fn existing(dist: &Path, tag: &str) -> Option<PathBuf> {
    let dir = dist.join(format!("{BUNDLE_PREFIX}{tag}"));
    dir.join(MANIFEST).is_file().then_some(dir)
}

fn resolve_tag(project: &Project, tag: &str, plan: bool, em: &Emitter) -> anyhow::Result<Resolved> {
    validate_tag(tag)?;
    let dist = project.dist_dir();
    if let Some(dir) = existing(dist, tag) {
        let bundle = bundle_for_tag(dist, tag)?;
        return Ok(Resolved {
            bundle,
            how: format!("the bundle {}", dir.display()),
            built: false,
            _scratch: None,
        });
    }
    let git = Git::of(&project.root);
    let commit = match &git {
        Ok(g) => g.tag_commit(tag),
        Err(_) => None,
    };
    let Some(commit) = commit else {
        let why = match &git {
            Ok(_) => format!("{tag} is not a git tag of {}", project.root.display()),
            Err(e) => format!("{} is not a git checkout ({e})", project.root.display()),
        };
        return Err(usage_error(format!(
            "no release bundle for tag {tag:?}: {} does not exist (available tags: {}; bundles are read from \
             dist_dir of {}) and {why}. \
             Either build the bundle: `dhash-service bundle --tag {tag} --out {}` in the checkout of that release, \
             or tag the commit to deploy in this checkout: `git tag {tag} <commit>`, then rerun (nothing was changed)",
            dist.join(format!("{BUNDLE_PREFIX}{tag}")).display(),
            available_tags(dist),
            project.topology.file.display(),
            dist.display()
        )));
    };
    let git = git?;
    let (out, scratch) = output_dir(project, plan)?;
    // The tag is the checkout's clean HEAD: its tree is the checkout's own.
    if git.head().as_deref() == Some(commit.as_str()) && !git.dirty()? {
        em.human(&format!(
            "tag {tag} is this checkout's commit {}: building its bundle from {}",
            short(&commit),
            project.root.display()
        ));
        let bundle = build_bundle(&project.root, tag, &out, false, em)?;
        return Ok(Resolved {
            how: format!(
                "built {} from git tag {tag} (commit {}, this checkout)",
                bundle.dir.display(),
                short(&commit)
            ),
            bundle,
            built: true,
            _scratch: scratch,
        });
    }
    let tree = tempfile::Builder::new()
        .prefix(&format!("dhash-{tag}-src-"))
        .tempdir()
        .context("creating a temporary folder for the tag's tree")?;
    em.human(&format!(
        "building the bundle of git tag {tag} (commit {}) from its tree in {}",
        short(&commit),
        tree.path().display()
    ));
    git.extract(&commit, tree.path())?;
    let bundle = build_bundle(tree.path(), tag, &out, true, em)?;
    drop(tree);
    Ok(Resolved {
        how: format!(
            "built {} from git tag {tag} (commit {})",
            bundle.dir.display(),
            short(&commit)
        ),
        bundle,
        built: true,
        _scratch: scratch,
    })
}

/// The tag of the checkout's bundle and whether it may be reused.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckoutTag {
    pub tag: String,
    /// A bundle of this tag built before is the same release (a clean commit).
    pub reusable: bool,
    /// Why it may not be reused, in words.
    pub note: Option<String>,
}

/// `v<version>-<short commit>[-dirty]`, or `v<version>-local` outside git.
pub fn checkout_tag(root: &Path) -> CheckoutTag {
    let version = workspace_version(root);
    match Git::of(root) {
        Ok(g) => match (g.head(), g.dirty()) {
            (Some(head), Ok(false)) => CheckoutTag {
                tag: format!(
                    "v{version}-{}",
                    g.short_head().unwrap_or_else(|| short(&head))
                ),
                reusable: true,
                note: None,
            },
            (Some(head), dirty) => CheckoutTag {
                tag: format!(
                    "v{version}-{}-dirty",
                    g.short_head().unwrap_or_else(|| short(&head))
                ),
                reusable: false,
                note: Some(match dirty {
                    Err(e) => format!("cannot tell whether the work tree is clean ({e:#})"),
                    _ => format!(
                        "the work tree differs from commit {} in {}",
                        short(&head),
                        BUNDLE_INPUTS.join(", ")
                    ),
                }),
            },
            (None, _) => CheckoutTag {
                tag: format!("v{version}-local"),
                reusable: false,
                note: Some(format!("{} has no commit yet", root.display())),
            },
        },
        Err(e) => CheckoutTag {
            tag: format!("v{version}-local"),
            reusable: false,
            note: Some(format!("{} is not a git checkout ({e})", root.display())),
        },
    }
}

fn resolve_checkout(project: &Project, plan: bool, em: &Emitter) -> anyhow::Result<Resolved> {
    let ct = checkout_tag(&project.root);
    let dist = project.dist_dir();
    if ct.reusable {
        if let Some(dir) = existing(dist, &ct.tag) {
            let bundle = bundle_for_tag(dist, &ct.tag)?;
            em.human(&format!(
                "no --tag given: the checkout's release, reusing {} (built for this commit)",
                dir.display()
            ));
            return Ok(Resolved {
                bundle,
                how: format!("the checkout's bundle {} (this commit)", dir.display()),
                built: false,
                _scratch: None,
            });
        }
    }
    em.human(&format!(
        "no --tag given: building the checkout's release bundle {BUNDLE_PREFIX}{}{}{}",
        ct.tag,
        ct.note
            .as_deref()
            .map(|n| format!(" ({n}: rebuilt every time)"))
            .unwrap_or_default(),
        if plan {
            " into a temporary folder (dry run: dist/ is left as it is)"
        } else {
            ""
        }
    ));
    let (out, scratch) = output_dir(project, plan)?;
    let bundle = build_bundle(&project.root, &ct.tag, &out, !ct.reusable, em)?;
    Ok(Resolved {
        how: format!(
            "built {} from the checkout {}{}",
            bundle.dir.display(),
            project.root.display(),
            ct.note.map(|n| format!(" ({n})")).unwrap_or_default()
        ),
        bundle,
        built: true,
        _scratch: scratch,
    })
}

/// Where a bundle is built: dist/, or a temporary folder for a plan.
fn output_dir(
    project: &Project,
    plan: bool,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    if plan {
        let t = tempfile::Builder::new()
            .prefix("dhash-plan-")
            .tempdir()
            .context("creating a temporary folder for the planned bundle")?;
        Ok((t.path().to_path_buf(), Some(t)))
    } else {
        Ok((project.dist_dir().to_path_buf(), None))
    }
}

/// The `version` of the checkout's workspace `Cargo.toml`, else this tool's.
pub fn workspace_version(root: &Path) -> String {
    let text = fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
    let mut in_package = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_package = l == "[workspace.package]" || l == "[package]";
            continue;
        }
        if !in_package {
            continue;
        }
        if let Some(rest) = l.strip_prefix("version") {
            let v = rest.trim_start().trim_start_matches('=').trim();
            let v = v.trim_matches('"');
            if !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))
            {
                return v.to_string();
            }
        }
    }
    env!("CARGO_PKG_VERSION").to_string()
}

fn short(commit: &str) -> String {
    commit.chars().take(7).collect()
}

/// git, run on one checkout.
struct Git {
    root: PathBuf,
}

impl Git {
    /// The checkout whose top level is `root` (a folder inside another
    /// repository is not a checkout of its own).
    fn of(root: &Path) -> anyhow::Result<Git> {
        let top = run_git(root, &["rev-parse", "--show-toplevel"])?;
        let top = PathBuf::from(top.trim());
        if !gates_core::fsutil::same_path(&top, root) {
            anyhow::bail!(
                "its git top level is {}, not the project root",
                top.display()
            );
        }
        let root = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        Ok(Git { root })
    }

    fn head(&self) -> Option<String> {
        run_git(
            &self.root,
            &["rev-parse", "--verify", "--quiet", "HEAD^{commit}"],
        )
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
    }

    fn short_head(&self) -> Option<String> {
        run_git(&self.root, &["rev-parse", "--short", "HEAD"])
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// Whether the bundle inputs differ from HEAD (untracked files there count).
    fn dirty(&self) -> anyhow::Result<bool> {
        let mut args = vec!["status", "--porcelain", "--"];
        args.extend(BUNDLE_INPUTS.iter().copied());
        Ok(!run_git(&self.root, &args)?.trim().is_empty())
    }

    /// The commit of tag `tag`, when it is a tag of this checkout.
    fn tag_commit(&self, tag: &str) -> Option<String> {
        let spec = format!("refs/tags/{tag}^{{commit}}");
        run_git(&self.root, &["rev-parse", "--verify", "--quiet", &spec])
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// `git archive <commit> | tar -x -C <into>`.
    fn extract(&self, commit: &str, into: &Path) -> anyhow::Result<()> {
        let mut archive = Command::new("git")
            .arg("-C")
            .arg(&self.root)
            .args(["archive", "--format=tar", commit])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("running git archive")?;
        let pipe = archive
            .stdout
            .take()
            .ok_or_else(|| anyhow!("git archive: no output pipe"))?;
        let tar = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(into)
            .stdin(Stdio::from(pipe))
            .stderr(Stdio::inherit())
            .status();
        let git = archive.wait().context("waiting for git archive")?;
        let tar = tar.context("running tar (needed to extract the tag's tree)")?;
        if !git.success() || !tar.success() {
            anyhow::bail!(
                "extracting commit {} into {} failed (git archive: {git}, tar: {tar})",
                short(commit),
                into.display()
            );
        }
        Ok(())
    }
}

fn run_git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    // --no-optional-locks: `git status` must not rewrite .git/index (a dry
    // run changes no file of the checkout).
    let out = Command::new("git")
        .arg("--no-optional-locks")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!("git is not installed")
            } else {
                anyhow!("running git: {e}")
            }
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        anyhow::bail!(
            "git {} failed{}",
            args.first().copied().unwrap_or(""),
            if err.is_empty() {
                String::new()
            } else {
                format!(": {err}")
            }
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The service binary to bundle for `tree`, and the migrations folder to
/// pass (only with a prebuilt binary: a built one embeds its tree's).
fn service_binary(tree: &Path, em: &Emitter) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let exe_dir = exe
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("{} has no folder", exe.display()))?;
    let sibling = exe_dir.join("dhash-service");
    let checkout =
        tree.join("Cargo.toml").is_file() && tree.join("dhash-service/Cargo.toml").is_file();
    let no_build = std::env::var_os(NO_BUILD_VAR).is_some_and(|v| v == "1");
    if checkout && !no_build {
        match cargo_build(tree, &exe_dir, em)? {
            Some(bin) => return Ok((bin, None)),
            None => em.human("cargo is not installed: bundling the dhash-service beside this tool"),
        }
    }
    if !sibling.is_file() {
        return Err(usage_error(format!(
            "no dhash-service to bundle: {} does not exist{}",
            sibling.display(),
            if checkout && no_build {
                format!(" and {NO_BUILD_VAR}=1 forbids building it")
            } else if checkout {
                " and cargo is not installed".to_string()
            } else {
                format!(
                    " and {} is not a cargo checkout to build it from",
                    tree.display()
                )
            }
        )));
    }
    let migrations = tree.join("dhash-service").join("migrations");
    Ok((sibling, migrations.is_dir().then_some(migrations)))
}

/// `cargo build --bin dhash-service` of `tree` in the running tool's profile
/// and target folder. `Ok(None)` when cargo is not installed.
fn cargo_build(tree: &Path, exe_dir: &Path, em: &Emitter) -> anyhow::Result<Option<PathBuf>> {
    let mut cmd = cargo_command(tree, exe_dir);
    em.human(&format!(
        "building dhash-service of {} (cargo, output below)",
        tree.display()
    ));
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow!("running cargo: {e}")),
    };
    let executable = child.stdout.take().and_then(built_executable);
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        anyhow::bail!(
            "cargo build of dhash-service in {} failed ({status}); nothing was changed",
            tree.display()
        );
    }
    let bin = executable.ok_or_else(|| {
        anyhow!(
            "cargo built {} but named no dhash-service executable",
            tree.display()
        )
    })?;
    Ok(Some(bin))
}

/// The cargo command line: the target folder and profile of the running
/// tool (`target/<profile>/`), else a release build in the tree's own.
fn cargo_command(tree: &Path, exe_dir: &Path) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(tree.join("Cargo.toml"))
        .args([
            "--bin",
            "dhash-service",
            "--message-format=json-render-diagnostics",
        ]);
    // target/<profile>/deploy_dhash: build into the same target folder and profile.
    let profile = exe_dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let target = exe_dir
        .parent()
        .filter(|t| t.join("CACHEDIR.TAG").is_file() || t.join(".rustc_info.json").is_file());
    let Some(t) = target else {
        cmd.arg("--release");
        return cmd;
    };
    // Another tree (a tag's, extracted to a temp folder) builds in a
    // folder of its own: its dhash-service would otherwise replace the
    // checkout's in target/<profile>/, and a later, "fresh" build of the
    // checkout would report that binary as its own.
    if tree.starts_with(t.parent().unwrap_or(t)) {
        cmd.arg("--target-dir").arg(t);
    } else {
        cmd.arg("--target-dir").arg(t.join("tag-builds"));
    }
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    cmd
}

/// The dhash-service executable cargo's JSON messages name (the last one).
fn built_executable(stdout: impl std::io::Read) -> Option<PathBuf> {
    let mut executable = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["target"]["name"] == "dhash-service" {
            if let Some(p) = v["executable"].as_str() {
                executable = Some(PathBuf::from(p));
            }
        }
    }
    executable
}

/// Builds `<out>/dhash-<tag>/` of `tree` with `dhash-service bundle`; its
/// events are forwarded. `force` replaces a bundle of the same tag.
fn build_bundle(
    tree: &Path,
    tag: &str,
    out: &Path,
    force: bool,
    em: &Emitter,
) -> anyhow::Result<Bundle> {
    let (bin, migrations) = service_binary(tree, em)?;
    // A copy of a freshly built binary: a later cargo build of another tree
    // may replace the file in target/ while this one is bundled.
    let scratch = tempfile::Builder::new()
        .prefix("dhash-service-bin-")
        .tempdir()
        .context("creating a temporary folder")?;
    let bin = if migrations.is_none() {
        let copy = scratch.path().join("dhash-service");
        fs::copy(&bin, &copy).with_context(|| format!("copying {}", bin.display()))?;
        copy
    } else {
        bin
    };
    let final_dir = out.join(format!("{BUNDLE_PREFIX}{tag}"));
    let mut cmd = Command::new(&bin);
    cmd.args(["bundle", "--tag", tag, "--out"])
        .arg(out)
        .arg("--env")
        .arg(em.env());
    if let Some(m) = &migrations {
        cmd.arg("--migrations").arg(m);
    }
    if force && final_dir.exists() {
        cmd.arg("--force");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {} bundle", bin.display()))?;
    if let Some(o) = child.stdout.take() {
        for line in BufReader::new(o).lines().map_while(Result::ok) {
            if serde_json::from_str::<serde_json::Value>(&line).is_ok_and(|v| v.is_object()) {
                em.forward(&line);
            } else if !line.trim().is_empty() {
                em.human(&line);
            }
        }
    }
    let status = child.wait().context("waiting for dhash-service bundle")?;
    drop(scratch);
    if !status.success() {
        anyhow::bail!(
            "building the bundle {} failed ({status}); nothing was deployed",
            final_dir.display()
        );
    }
    bundle_for_tag(out, tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_of_the_workspace() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join("Cargo.toml"),
            "[workspace]\nmembers = []\n\n[workspace.package]\nedition = \"2021\"\nversion = \"1.4.2\"\n",
        )
        .expect("write");
        assert_eq!(workspace_version(dir.path()), "1.4.2");
        fs::write(
            dir.path().join("Cargo.toml"),
            "[dependencies]\nversion = \"9\"\n",
        )
        .expect("write");
        assert_eq!(workspace_version(dir.path()), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn tags_that_could_read_as_options_are_refused() {
        for bad in ["", "-x", ".hidden", "a b", "a/b", "x;rm"] {
            assert!(validate_tag(bad).is_err(), "{bad:?}");
        }
        validate_tag("v1.2.3-rc_1").expect("valid");
    }

    #[test]
    fn outside_git_the_tag_is_local_and_never_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ct = checkout_tag(dir.path());
        assert!(ct.tag.ends_with("-local"), "{ct:?}");
        assert!(!ct.reusable);
    }
}
