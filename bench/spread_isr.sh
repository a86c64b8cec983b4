# Sourced (not run) by the bench scripts that put one isr in front of the bench origin for
# the 16 KiB spread: `spread_isr DIR REVALIDATE ORIGIN_CPU [MORE_TOML]` writes DIR/isr.toml
# (isr on 127.0.0.1:19405, a 256 MiB memory tier, route /page/{n} with that revalidate,
# then MORE_TOML, e.g. more routes), starts the origin on 127.0.0.1:19400 on ORIGIN_CPU and
# isr on CPU 0 (API secret `bench`) as background jobs, waits until isr serves a page, and
# sets isr_pid. ISR_BIN=FILE runs another isr binary. Run from the repository root, after building.
spread_isr() {
  cat > "$1/isr.toml" <<EOT
listen = "127.0.0.1:19405"
origin = "http://127.0.0.1:19400"
data_dir = "$1/data"
[cache]
memory = "256MiB"
[[route]]
match = "/page/{n}"
revalidate = $2
${4:-}
EOT
  taskset -c "$3" ./target/release/examples/bench_origin serve 127.0.0.1:19400 >/dev/null 2>&1 &
  ISR_SECRET=bench ISR_LOG=warn taskset -c 0 "${ISR_BIN:-./target/release/isr}" serve --config "$1/isr.toml" >/dev/null 2>&1 &
  isr_pid=$!
  until curl -sf -o /dev/null http://127.0.0.1:19405/page/0; do sleep 0.05; done
}
