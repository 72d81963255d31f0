#!/usr/bin/env bash
# Drop-in for the runbooks' health-check.sh: one health check (smoke_tests --quick).
# Without --env it checks production, as the runbooks' loop does.
case " $* " in
  *" --env "*|*" --env="*) exec "$(dirname "${BASH_SOURCE[0]}")/lib/run-tool" smoke_tests --quick "$@" ;;
  *) exec "$(dirname "${BASH_SOURCE[0]}")/lib/run-tool" smoke_tests --quick --env production "$@" ;;
esac
