# Timed stages for scripts/test (sourced): stage NAME LIMIT COMMAND..., a table of them at the end.
#
# Each stage's command runs under timeout(1) in the background while the script waits for it.
# LIMIT is its wall-clock limit in seconds (0: none): past it the stage gets SIGINT (pytest then
# prints where it was and runs its fixtures' teardown, so a lab is taken down), and SIGKILL two
# minutes later if it is still running; the stage fails and the later stages run.
#
# Ctrl-C, SIGTERM or SIGHUP to the script does the same to the running stage, at once, and no
# later stage runs: the script exits 130 after the stage has ended, with the table. (A command
# run in the foreground would not do: timeout(1) puts the stage in its own process group, so a
# terminal's Ctrl-C never reached it, and the script went on to the next stage when it ended.)

names=() seconds=() results=()
status=0
current=0
interrupted=0

_interrupt() {
  interrupted=1
  if [ "$current" -ne 0 ]; then
    kill -INT "$current" 2>/dev/null || true  # timeout(1) passes it on to the stage
  else  # between two stages: none is running, none more starts
    echo "interrupted: no later stage runs" >&2
    exit 130
  fi
}
trap _interrupt INT TERM HUP

stage() {  # stage NAME LIMIT COMMAND...
  local name=$1 limit=$2 start=$EPOCHREALTIME rc=0 took
  shift 2
  printf '=== stage %s:' "$name"; printf ' %q' "$@"; echo
  timeout --signal=INT --kill-after=120 "$limit" "$@" &
  current=$!
  # A trapped signal ends a wait early (its status then 128 + the signal's number): wait again
  # until the stage itself has ended, then take the stage's own status (bash keeps it).
  while kill -0 "$current" 2>/dev/null; do
    wait "$current" || true
  done
  rc=0
  wait "$current" || rc=$?
  current=0
  if [ "$rc" -eq 124 ]; then echo "stage limit: interrupted after $limit s" >&2; fi
  took=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  echo "stage $name: $took s"
  names+=("$name") seconds+=("$took")
  if [ "$interrupted" -ne 0 ]; then
    results+=("interrupted (exit $rc)")
    echo "interrupted: no later stage runs" >&2
    exit 130
  fi
  if [ "$rc" -eq 0 ]; then results+=(ok); else results+=("failed (exit $rc)"); fi
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
  return "$rc"
}

summary() {
  local i total=0
  echo
  printf '%-8s %9s  %s\n' stage seconds result
  for i in "${!names[@]}"; do
    printf '%-8s %9s  %s\n' "${names[$i]}" "${seconds[$i]}" "${results[$i]}"
    total=$(awk -v a="$total" -v b="${seconds[$i]}" 'BEGIN { print a + b }')
  done
  printf '%-8s %9.1f\n' total "$total"
}
trap summary EXIT
