# Sourced by bench/instructions.sh and bench/disk_instructions.sh.
# callgrind_total DIR PID: has the isr under callgrind (PID, writing DIR/cg.out) dump its
# counts, stops it, and prints the user-space instructions counted since the last zeroing.
callgrind_total() {
  callgrind_control -d "$2" >/dev/null 2>&1
  sleep 1
  kill "$2"
  wait "$2" 2>/dev/null || true
  cat "$1"/cg.out.* | awk '/^summary:/ {s += $2} END {print s}'
}
