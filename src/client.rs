//! `isr revalidate` and `isr status`, and the small HTTP client the demo's CMS uses for
//! the same revalidation call.

use std::process::ExitCode;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Args)]
pub(crate) struct RevalidateArgs {
    /// The isr server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// A path to revalidate (repeatable).
    #[arg(long = "path")]
    paths: Vec<String>,
    /// A tag to revalidate (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Treat every --path as a layout: it and everything below it.
    #[arg(long)]
    layout: bool,
    /// Expire instead of marking stale: the next request waits for fresh content.
    #[arg(long)]
    expire: bool,
    /// Also regenerate every affected page now, in the background.
    #[arg(long)]
    eager: bool,
}

#[derive(Args)]
pub(crate) struct StatusArgs {
    /// The isr server (its main listener, or its admin_listen).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
}

/// Posts a revalidation to `server`'s API. Returns the status and the response body.
pub(crate) async fn post_revalidate(
    server: &str,
    secret: &str,
    body: &serde_json::Value,
) -> Result<(u16, String), String> {
    let url = format!("{}/_isr/revalidate", server.trim_end_matches('/'));
    call(http::Method::POST, &url, secret, body.to_string()).await
}

/// One request with the secret as a bearer token; the status and the body.
async fn call(
    method: http::Method,
    url: &str,
    secret: &str,
    body: String,
) -> Result<(u16, String), String> {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::AUTHORIZATION, format!("Bearer {secret}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("bad server URL {url}: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let res = client
        .request(req)
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = res.status().as_u16();
    let bytes = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// The first secret in `ISR_SECRET`.
fn secret() -> Option<String> {
    let all = std::env::var("ISR_SECRET").unwrap_or_default();
    all.split(',')
        .map(str::trim)
        .find(|s| !s.is_empty())
        .map(String::from)
}

/// `isr status`: totals, fetches in flight and overdue pages, from the admin JSON.
pub(crate) async fn status(args: StatusArgs) -> ExitCode {
    let secret = secret().unwrap_or_default();
    let url = format!(
        "{}/_isr/admin/status.json",
        args.server.trim_end_matches('/')
    );
    let text = match call(http::Method::GET, &url, &secret, String::new()).await {
        Ok((200, text)) => text,
        Ok((401, _)) => {
            eprintln!("isr status: {url} needs the secret: set ISR_SECRET (or use the admin_listen address)");
            return ExitCode::from(2);
        }
        Ok((status, text)) => {
            eprintln!("isr status: server answered {status}: {}", text.trim());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("isr status: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        eprintln!("isr status: not a status answer: {text}");
        return ExitCode::FAILURE;
    };
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let mib = |k: &str| n(k) as f64 / (1 << 20) as f64;
    println!("server        {}", args.server);
    println!("pages         {}", n("entries"));
    println!("store         {:.1} MiB", mib("store_bytes"));
    println!("memory tier   {:.1} MiB", mib("memory_tier_bytes"));
    let req = &v["requests"];
    println!(
        "requests      HIT {}  STALE {}  MISS {}  REVALIDATED {}  BYPASS {}",
        req["HIT"], req["STALE"], req["MISS"], req["REVALIDATED"], req["BYPASS"]
    );
    match v["hit_ratio"].as_f64() {
        Some(r) => println!("hit ratio     {:.1} %", r * 100.0),
        None => println!("hit ratio     - (no cacheable requests yet)"),
    }
    println!("fetching now  {}", v["regenerations_in_flight"]);
    let scanned = if n("overdue_scanned_at") == 0 {
        " (no scan yet)"
    } else {
        ""
    };
    println!("overdue       {}{scanned}", n("overdue"));
    for p in v["overdue_pages"].as_array().into_iter().flatten().take(20) {
        println!(
            "  {}  last regenerated {} s ago, window {} s",
            p["key"].as_str().unwrap_or("?"),
            p["age_s"],
            p["revalidate_s"]
        );
    }
    ExitCode::SUCCESS
}

pub(crate) async fn revalidate(args: RevalidateArgs) -> ExitCode {
    let Some(secret) = secret() else {
        eprintln!("isr revalidate: set ISR_SECRET to the server's revalidation secret");
        return ExitCode::from(2);
    };
    if args.paths.is_empty() && args.tags.is_empty() {
        eprintln!("isr revalidate: give at least one --path or --tag");
        return ExitCode::from(2);
    }
    let body = serde_json::json!({
        "paths": args.paths,
        "tags": args.tags,
        "type": if args.layout { "layout" } else { "page" },
        "mode": if args.expire { "expire" } else { "stale" },
        "eager": args.eager,
    });
    match post_revalidate(&args.server, &secret, &body).await {
        Ok((200, text)) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Ok((status, text)) => {
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(String::from))
                .unwrap_or(text);
            eprintln!("isr revalidate: server answered {status}: {msg}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("isr revalidate: {e}");
            ExitCode::FAILURE
        }
    }
}
