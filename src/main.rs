//! The `isr` command: reads flags and config, then hands over to the `isr` library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod client;
mod demo;

/// mimalloc keeps RSS close to what the memory tier holds when pages churn across threads
/// (glibc's per-thread arenas kept ~90 MiB of freed bodies) and is faster on small
/// allocations. Its 2.x line (feature `v2`): with the 3.x line that `libmimalloc-sys` builds
/// by default, a disk-tier hit took 13 % more instructions, most in the allocator's slow
/// path for the 4 KiB buffers redb allocates and frees for every page it reads (RSS the
/// same). Measured in BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "isr",
    version,
    about = "Incremental Static Regeneration in front of any website"
)]
struct Cli {
    /// Log format on stderr (default: human on a terminal, JSON otherwise is not assumed).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the site through the cache.
    Serve(ServeArgs),
    /// A self-contained demo: a built-in blog origin with isr in front of it.
    Demo(demo::DemoArgs),
    /// Ask a running isr to revalidate paths or tags (secret from ISR_SECRET).
    Revalidate(client::RevalidateArgs),
    /// Totals, fetches in flight and overdue pages of a running isr (secret from ISR_SECRET).
    Status(client::StatusArgs),
    /// Run the [prebuild] once into the store, then exit (for deploy pipelines).
    Prebuild(ServeArgs),
    /// Validate a config file and print its routes.
    Check {
        /// Config file (default: ./isr.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Config file (default: ./isr.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:8080.
    #[arg(long)]
    listen: Option<String>,
    /// Origin URL, e.g. http://127.0.0.1:3000.
    #[arg(long)]
    origin: Option<String>,
    /// Directory of the embedded store.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Redis URL of a store shared by several nodes, e.g. redis://127.0.0.1:6379/0.
    #[arg(long)]
    redis: Option<String>,
    /// Log one line per request (key, state, age) and per origin fetch (status, duration).
    #[arg(long, env = "ISR_DEBUG_CACHE", value_parser = clap::builder::BoolishValueParser::new())]
    debug_cache: bool,
}

fn config_file(given: Option<PathBuf>) -> Option<PathBuf> {
    given.or_else(|| {
        let default = PathBuf::from("isr.toml");
        default.exists().then_some(default)
    })
}

fn init_logs(format: LogFormat, debug_cache: bool) {
    use tracing_subscriber::EnvFilter;
    let mut filter = EnvFilter::try_from_env("ISR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if debug_cache {
        // The per-request lines are asked for explicitly: shown whatever ISR_LOG says.
        filter = filter.add_directive("isr::cache=info".parse().expect("valid directive"));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let debug_cache = matches!(&cli.command, Command::Serve(a) if a.debug_cache);
    init_logs(cli.log_format, debug_cache);
    match cli.command {
        Command::Check { config } => check(config),
        Command::Serve(args) => serve(args),
        Command::Demo(args) => runtime().block_on(demo::run(args)),
        Command::Revalidate(args) => runtime().block_on(client::revalidate(args)),
        Command::Status(args) => runtime().block_on(client::status(args)),
        Command::Prebuild(args) => prebuild(args),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking threads do store reads and compression; a few suffice and each one
        // costs memory (stack, malloc arena).
        .max_blocking_threads(8)
        .build()
        .expect("tokio runtime")
}

fn check(config: Option<PathBuf>) -> ExitCode {
    use isr::config::CdnKind;
    let Some(file) = config_file(config) else {
        eprintln!("isr check: no config file (give --config FILE or create ./isr.toml)");
        return ExitCode::from(2);
    };
    match isr::config::load(Some(&file), &Default::default()) {
        Ok(cfg) => {
            println!("{}: ok", file.display());
            println!("origin  {}", cfg.origin);
            println!("listen  {}", cfg.listen);
            for r in &cfg.routes {
                let revalidate = match r.revalidate {
                    None => "default".to_string(),
                    Some(None) => "false".to_string(),
                    Some(Some(ms)) => format!("{}s", ms as f64 / 1000.0),
                };
                if r.cache {
                    println!(
                        "route   {:<30} revalidate={revalidate} tags={:?}",
                        r.pattern, r.tags
                    );
                } else {
                    println!("route   {:<30} cache=false", r.pattern);
                }
            }
            for c in &cfg.cdns {
                let to = match &c.kind {
                    CdnKind::HttpPurge { url, xkey, .. } => format!("{url} xkey={xkey}"),
                    CdnKind::Cloudflare { zone_id, .. } => format!("zone {zone_id}"),
                    CdnKind::Fastly {
                        service_id, soft, ..
                    } => {
                        format!("service {service_id} soft={soft}")
                    }
                    CdnKind::Webhook { url, .. } => url.clone(),
                };
                println!(
                    "cdn     {:<30} {} {to} emit_tags={} purge_on_regenerate={}",
                    c.name,
                    c.kind.as_str(),
                    c.emit_tags,
                    c.purge_on_regenerate
                );
            }
            for (name, l) in &cfg.cache_life {
                let revalidate = l
                    .revalidate
                    .map_or("false".to_string(), |ms| format!("{}s", ms as f64 / 1000.0));
                println!(
                    "life    {name:<30} stale={}s revalidate={revalidate} expire={}s",
                    l.stale as f64 / 1000.0,
                    l.expire as f64 / 1000.0
                );
            }
            if !cfg.fetch_allow.is_empty() {
                println!(
                    "fetch   /_isr/fetch may fetch {}",
                    cfg.fetch_allow.join(", ")
                );
            }
            if let Err(e) = isr::cdn::check_env(&cfg, |v| std::env::var(v).ok()) {
                println!("warning: {e}: isr serve will refuse to start without it");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("isr: config error: {e}");
            ExitCode::from(2)
        }
    }
}

fn prebuild(args: ServeArgs) -> ExitCode {
    let cfg = match load_config(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // A progress bar on a terminal (indicatif draws nothing when stderr is not one).
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "prebuild {bar:40} {pos}/{len} pages, {per_sec}, {eta} left",
        )
        .expect("a valid template"),
    );
    let shown = bar.clone();
    let progress = move |done: usize, total: usize| {
        shown.set_length(total as u64);
        shown.set_position(done as u64);
    };
    runtime().block_on(async move {
        let result = isr::prebuild_once(cfg, &progress).await;
        bar.finish_and_clear();
        match result {
            Ok(r) => {
                println!(
                    "prebuilt {} pages: {} stored, {} already fresh, {} failed",
                    r.total, r.stored, r.fresh, r.failed
                );
                if r.failed > 0 && r.failed == r.total {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("isr: {e}");
                ExitCode::from(2)
            }
        }
    })
}

/// The config for `serve` and `prebuild`: the file plus the flags, or the exit code of a
/// config error (already printed).
fn load_config(args: ServeArgs) -> Result<isr::Config, ExitCode> {
    let overrides = isr::config::Overrides {
        listen: args.listen,
        origin: args.origin,
        data_dir: args.data_dir,
        redis: args.redis,
        debug_cache: args.debug_cache,
    };
    isr::config::load(config_file(args.config).as_deref(), &overrides).map_err(|e| {
        eprintln!("isr: config error: {e}");
        ExitCode::from(2)
    })
}

fn serve(args: ServeArgs) -> ExitCode {
    let cfg = match load_config(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let secrets = isr::Secrets::parse(&std::env::var(&cfg.secret_env).unwrap_or_default());
    raise_open_file_limit();
    no_transparent_huge_pages();
    runtime().block_on(async move {
        let server = match isr::Server::bind(cfg.clone(), secrets).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("isr: {e}");
                return ExitCode::from(2);
            }
        };
        match &cfg.redis {
            Some(r) => tracing::info!(listen = %server.local_addr(), origin = %cfg.origin, redis = %r.url, prefix = %r.prefix, "isr serving"),
            None => tracing::info!(listen = %server.local_addr(), origin = %cfg.origin, data_dir = %cfg.data_dir.display(), "isr serving"),
        }
        server.run(shutdown_signal()).await;
        tracing::info!("isr stopped");
        ExitCode::SUCCESS
    })
}

/// Turns transparent huge pages off for this process, as Redis advises for itself: the
/// memory tier frees page bodies in random order, and a 2 MiB huge page stays resident
/// while any of it is in use. On a million 16 KiB pages behind a 256 MiB tier this took
/// RSS plus page files from 320–332 MiB to 305–317 MiB, at the same hit rates
/// (BENCHMARKS.md). Left as it is when that fails.
fn no_transparent_huge_pages() {
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "could not turn transparent huge pages off");
    }
}

/// Raises the soft limit on open files to the hard limit, as nginx's
/// `worker_rlimit_nofile` and Go's runtime do: each connection and each page file (a large
/// body in the memory tier) takes a descriptor, and the usual soft default of 1,024 is
/// far below `[limits] max_connections`. Left as it is when that fails.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum) {
        if soft >= hard {
            return;
        }
        limit.current = Some(hard);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
