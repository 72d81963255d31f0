//! The `deploy_dhash` command line: public so that completions and man pages
//! can be generated from it (`Args::command()`), and so that `main.rs` stays a
//! parse-and-run shim.

use clap::Parser;

use crate::DeployOptions;

pub fn after_help() -> String {
    format!(
        "Steps: preflight (the gates file must have a section with gates for the environment,
or the T+60 watch could not start: exit 2 naming the file and environments.<env>;
placeholders refused in production) -> find or build the bundle -> verify its checksums
(release.json) -> take the environment lock -> verified pre-deploy backup (the default;
--no-backup skips it; a backup.verified event on stdin is used instead; none when
nothing is deployed and there is no database) -> install into <install_root>/releases/<id>/ (temp name +
rename; skipped when already installed and verified) -> apply pending migrations (the
new release's) -> switch <install_root>/current atomically -> restart the service ->
wait for health -> start the T+60 watch in the background: monitor_dhash --env E
--release ID [--backup B] --detach, own process group, no terminal; it must register in
<install_root>/watch.json within 10 s; event monitor.detached (pid, release, log,
events); follow it with `monitor_dhash --env E` (attaches) or `tail -f <log>`, stop it
with `kill <pid>`. --no-monitor skips it. If the watch does not register, the event
monitor.failed (level critical) says the release is LIVE BUT UNWATCHED and the exit code
is 5: start `monitor_dhash --env E` by hand. The human log of the run is
monitor_logs/deploy_<env>_<ts>.log, linked as logs/deploy_<env>_<ts>.log and
logs/deploy-<env>-<ts>.log (path printed on stderr).

If the new release does not become healthy: it is marked failed in
releases.json (never a switch-back target again), current is switched back to the
previous release, the migrations this deploy applied are reverted with the new
release's .down.sql files (or the pre-deploy backup is restored when they cannot run),
the previous release is restarted and verified, and the exit code is 1 (4 when that
recovery fails).

Which release: without --tag, the checkout deploy_dhash runs from: its bundle
dist/dhash-v<version>-<commit>/ is reused when built for this commit, else built (cargo
build of dhash-service in this tool's profile, unless DHASH_NO_BUILD=1 or cargo is
missing: then the dhash-service beside this tool; then dhash-service bundle). A work
tree with uncommitted changes to the release's inputs gets the tag suffix -dirty and is
rebuilt every time. --tag T takes dist/dhash-T/, else builds it from the git tag T's
tree (in a temporary folder, removed afterwards), else exits 2 naming both ways to get
a bundle, before anything changed. The choice is printed on stderr.
--no-migrate refuses, before anything is switched, a release with pending migrations.
When pending migrations lack a .down.sql and there is no backup, the deploy refuses
(use --backup-first). A backup.verified event read on stdin (backup_dhash | deploy_dhash)
is the rollback point; --backup-first then takes no second backup.
A deploy killed at any instant leaves current on a complete release; the next run reads
<install_root>/deploy.journal.json, reports where it stopped and finishes the job. A
deploy killed while switching back from its failed release is finished by the next run
(switch-back, schema, restart, health; deploy.failed with finished_interrupted) before
anything else; a release recorded failed, rolled-back or quarantined in releases.json
is never deployed again (exit 1) unless --retry-failed.
--dry-run validates (bundle checksums, config and placeholders, lock, free disk, health
endpoint, pending migrations) and lists the steps; it changes no file outside target/
(a bundle it must build goes to a temporary folder, not dist/):
  deploy_dhash --dry-run --env staging > deploy-dryrun.log 2>&1

Fleet environments (environments.json lists `instances`, e.g. --env fleet): the
release goes out in the waves of `rollout.waves` (default: one instance, then the
rest). Each instance is drained (its `drain` command, or the local `draining`
marker), deployed as above (one backup, the shared schema migrated once), and put
back; each wave then bakes: its instances must stay healthy and, while the fleet is
mixed, must not fail more hash requests than the unmoved ones over the same minutes
(too little traffic is inconclusive, never a pass). A failed wave rolls back only
the moved instances, newest first (exit 3; 1 when inconclusive or an instance's
deploy failed; 4 when a rollback failed). Pending migrations without the line
`-- dhash: mixed-fleet-compatible` are refused (exit 2). A rollout killed between
waves resumes on rerun from <install_root>/fleet.journal.json (the interrupted wave
bakes again); one killed while rolling back finishes its rollback. No T+60 watch is
started for a fleet. Events: fleet.started, fleet.instance.drained,
fleet.instance.moved, fleet.wave.judged, fleet.wave.passed | fleet.wave.failed,
fleet.instance.rolled_back, fleet.rolled_back, fleet.completed, fleet.interrupted,
fleet.planned (dry run); the instances' own events carry `instance`.

Events (stdout, JSON lines): deploy.started, deploy.installed, deploy.switched,
deploy.healthy (release, from, backup) or deploy.failed; monitor.detached or
monitor.failed; deploy.interrupted,
deploy.planned (dry run), deploy.pruned; migrate.*, backup.*, service.* of the steps.

{}",
        gates_core::exit::EXIT_CODES_HELP
    )
}

/// Deploys a release bundle (dist/dhash-<tag>/) to an environment.
#[derive(Debug, Parser)]
#[command(name = "deploy_dhash", version, after_help = after_help())]
pub struct Args {
    /// Environment (from environments.json), e.g. staging or production.
    #[arg(long)]
    pub env: String,
    /// The release: dist/dhash-<TAG>/, else built from the git tag TAG
    /// (default: this checkout's release, built or reused).
    #[arg(long)]
    pub tag: Option<String>,
    /// Validate and list the steps; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Back up the environment first (the default; kept for the runbooks).
    #[arg(long, conflicts_with = "no_backup")]
    pub backup_first: bool,
    /// Take no pre-deploy backup (a backup.verified event on stdin is still
    /// the rollback point).
    #[arg(long)]
    pub no_backup: bool,
    /// Start no background T+60 watch once the release is live (quick-deploy
    /// runs its own, in the foreground).
    #[arg(long)]
    pub no_monitor: bool,
    /// Deploy a release recorded failed, rolled-back or quarantined in
    /// releases.json, knowingly (refused otherwise).
    #[arg(long)]
    pub retry_failed: bool,
    /// Do not wait for health after the restart (the release is recorded as unverified).
    #[arg(long)]
    pub skip_health_check: bool,
    /// Refuse, before switching, when the release has pending migrations.
    #[arg(long)]
    pub no_migrate: bool,
    /// More detail on stderr.
    #[arg(long)]
    pub verbose: bool,
}

impl Args {
    /// What the library is asked to do.
    pub fn into_options(self) -> DeployOptions {
        DeployOptions {
            env: self.env,
            tag: self.tag,
            dry_run: self.dry_run,
            backup_first: self.backup_first,
            no_backup: self.no_backup,
            no_monitor: self.no_monitor,
            retry_failed: self.retry_failed,
            skip_health_check: self.skip_health_check,
            no_migrate: self.no_migrate,
            verbose: self.verbose,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn args_are_consistent() {
        super::Args::command().debug_assert();
    }
}
