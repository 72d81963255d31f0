#!/usr/bin/env bash
# Installs the dhash tools the way tools are installed: binaries in
# PREFIX/bin, the runbooks' drop-in scripts and the configuration templates
# in PREFIX/share/dhash, shell completions (bash, zsh, fish) and man pages
# generated from the tools' own arguments. The installed drop-in scripts run
# the installed binaries and never call cargo.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: ./install.sh [--prefix P] [--profile release|debug] [--no-build]

  --prefix P         where to install (default: $PREFIX, else /usr/local)
  --profile PROFILE  release (default) or debug: which build of target/ to install
  --no-build         install what target/<profile>/ holds; do not run cargo

Installs:
  P/bin/<tool>                                  every tool (backup_dhash, deploy_dhash, ...)
  P/share/dhash/scripts/                        the drop-in scripts (backup_dhash.sh, notify.js, ...)
  P/share/dhash/config/                         environments.json and the quality-gates templates
  P/share/bash-completion/completions/<tool>    bash completions
  P/share/zsh/site-functions/_<tool>            zsh completions
  P/share/fish/vendor_completions.d/<tool>.fish fish completions
  P/share/man/man1/<tool>.1                     man pages

Copy P/share/dhash/config/*.json into a project folder and run the tools
there (they find environments.json in the current folder or its parents, or
through DHASH_ROOT).

Exit codes: 0 installed; 1 a build or copy failed; 2 usage.
EOF
}

prefix="${PREFIX:-/usr/local}" profile=release build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || { usage >&2; exit 2; }; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --profile) [ $# -ge 2 ] || { usage >&2; exit 2; }; profile=$2; shift 2 ;;
    --profile=*) profile=${1#--profile=}; shift ;;
    --no-build) build=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) flag=(--release) ;;
  debug) flag=() ;;
  *) echo "install.sh: --profile must be release or debug, not '$profile'" >&2; exit 2 ;;
esac

root=$(CDPATH= cd -- "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out="${CARGO_TARGET_DIR:-$root/target}/$profile"
tools=(backup_dhash deploy_dhash migrate_dhash rollback_dhash monitor_dhash notify
  deploy-notify smoke_tests validate_logging report_dhash dhash-service check_performance)

if [ "$build" = 1 ]; then
  command -v cargo >/dev/null 2>&1 || { echo "install.sh: cargo is needed to build (or --no-build)" >&2; exit 1; }
  echo "install.sh: building the tools ($profile)" >&2
  cargo build "${flag[@]}" --quiet --manifest-path "$root/Cargo.toml" --bins >&2
fi
for t in "${tools[@]}" dhash-dist; do
  [ -x "$out/$t" ] || { echo "install.sh: $out/$t is not built (run without --no-build)" >&2; exit 1; }
done

case "$prefix" in
  *$'\n'*) echo "install.sh: --prefix must not contain a newline" >&2; exit 2 ;;
esac
mkdir -p "$prefix" || { echo "install.sh: cannot create the prefix $prefix (choose a writable --prefix)" >&2; exit 1; }
# CDPATH unset: with it, cd may pick another folder of that name and print it.
prefix=$(CDPATH= cd -- "$prefix" && pwd)
share="$prefix/share"

install -d "$prefix/bin"
for t in "${tools[@]}"; do
  install -m 0755 "$out/$t" "$prefix/bin/$t"
done

# The drop-in scripts keep their layout (lib/run-tool beside them); bindir
# tells run-tool it is installed and where the binaries are.
install -d "$share/dhash/scripts/lib" "$share/dhash/scripts/deploy" "$share/dhash/config"
for f in "$root"/scripts/*.sh "$root"/scripts/*.js; do install -m 0755 "$f" "$share/dhash/scripts/"; done
for f in "$root"/scripts/deploy/*; do install -m 0755 "$f" "$share/dhash/scripts/deploy/"; done
install -m 0755 "$root/scripts/lib/run-tool" "$share/dhash/scripts/lib/run-tool"
install -m 0644 "$root/scripts/lib/run-tool.js" "$share/dhash/scripts/lib/run-tool.js"
printf '%s\n' "$prefix/bin" >"$share/dhash/scripts/lib/bindir"
for f in environments.json quality-gates-config.json quality-gates-mobius.json; do
  install -m 0644 "$root/$f" "$share/dhash/config/$f"
done

gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
"$out/dhash-dist" completions "$gen"
install -d "$share/bash-completion/completions" "$share/zsh/site-functions" "$share/fish/vendor_completions.d"
install -m 0644 "$gen"/bash/* "$share/bash-completion/completions/"
install -m 0644 "$gen"/zsh/* "$share/zsh/site-functions/"
install -m 0644 "$gen"/fish/* "$share/fish/vendor_completions.d/"
"$out/dhash-dist" man "$share/man/man1"

echo "install.sh: ${#tools[@]} tools in $prefix/bin; scripts and config templates in $share/dhash;" \
  "completions in $share/{bash-completion/completions,zsh/site-functions,fish/vendor_completions.d}; man pages in $share/man/man1" >&2
