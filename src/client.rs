//! `isr revalidate`, and the small HTTP client the demo's CMS uses for the same call.

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

/// Posts a revalidation to `server`'s API. Returns the status and the response body.
pub(crate) async fn post_revalidate(
    server: &str,
    secret: &str,
    body: &serde_json::Value,
) -> Result<(u16, String), String> {
    let url = format!("{}/_isr/revalidate", server.trim_end_matches('/'));
    let req = http::Request::post(&url)
        .header(http::header::AUTHORIZATION, format!("Bearer {secret}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
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

pub(crate) async fn revalidate(args: RevalidateArgs) -> ExitCode {
    let secret = std::env::var("ISR_SECRET").unwrap_or_default();
    let Some(secret) = secret.split(',').map(str::trim).find(|s| !s.is_empty()) else {
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
    match post_revalidate(&args.server, secret, &body).await {
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
