//! Fires N concurrent GETs at a URL (one connection each) and prints their latencies
//! as JSON: `burst URL N` → `{"n":…,"ok":…,"p50_ms":…,"max_ms":…,"states":{…}}`.

use std::collections::BTreeMap;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(n)) = (
        args.get(1),
        args.get(2).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: burst URL N");
        std::process::exit(2);
    };
    let uri: http::Uri = url.parse().expect("URL");
    let addr = uri.authority().expect("host:port").to_string();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
        uri.path()
    );
    // Connect everything first, then send at once, so the requests really are concurrent.
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        streams.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    let start = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            let mut go = start.1.clone();
            let request = request.clone();
            tokio::spawn(async move {
                let _ = go.wait_for(|v| *v).await;
                let t = Instant::now();
                s.write_all(request.as_bytes()).await.ok()?;
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.ok()?;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                let head = String::from_utf8_lossy(&buf[..buf.len().min(4096)]).to_string();
                let ok = head.starts_with("HTTP/1.1 200");
                let state = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-isr-cache: ").map(str::to_string))
                    .unwrap_or_default();
                Some((ms, ok, state))
            })
        })
        .collect();
    let _ = start.0.send(true);
    let mut lat = Vec::new();
    let mut ok = 0;
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        if let Ok(Some((ms, good, state))) = t.await {
            lat.push(ms);
            ok += usize::from(good);
            *states.entry(state).or_default() += 1;
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p50 = lat.get(lat.len() / 2).copied().unwrap_or(0.0);
    let max = lat.last().copied().unwrap_or(0.0);
    println!(
        "{}",
        serde_json::json!({ "n": n, "ok": ok, "p50_ms": p50, "max_ms": max, "states": states })
    );
}
