//! The floor of any hit path on this machine: a hand-written HTTP/1.1 loop with no
//! parsing beyond finding the end of each request, answering every request with the same
//! page (16 KiB, or `FLOOR_SIZE` bytes), either copied from memory (`copy`) or sent from a memfd with `sendfile`
//! (`sendfile`, zero-copy: what nginx static does). Comparing both with nginx static and
//! isr shows what a specialised zero-copy writer could win, before anyone writes one.
//!
//! `floor copy|sendfile ADDR` (run it pinned, e.g. `taskset -c 0`, and load it with wrk on
//! CPU 1).

use std::io::Write;
use std::os::fd::AsFd;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

fn main() {
    // FLOOR_RUNTIME=multi: the multi-thread scheduler isr runs on (one worker when pinned).
    let mut rt = if std::env::var("FLOOR_RUNTIME").as_deref() == Ok("multi") {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    rt.enable_all().build().expect("runtime").block_on(run());
}

async fn run() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "sendfile".into());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:19201".into());
    let mode = match mode.as_str() {
        "copy" => Mode::Copy,
        "sendfile" => Mode::Sendfile,
        "whole" => Mode::Whole,
        other => panic!("mode must be copy, sendfile or whole, not {other}"),
    };
    let size: usize =
        std::env::var("FLOOR_SIZE").map_or(16 * 1024, |s| s.parse().expect("FLOOR_SIZE"));
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {size}\r\nx-isr-cache: HIT\r\ncache-control: s-maxage=60\r\n\r\n"
    );
    let body = vec![b'x'; size];
    let mut whole = head.clone().into_bytes();
    whole.extend_from_slice(&body);
    let memfd = rustix::fs::memfd_create("page", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    let (file_bytes, file_len) = match mode {
        Mode::Whole => (&whole, whole.len()),
        _ => (&body, size),
    };
    std::fs::File::from(memfd.try_clone().expect("dup"))
        .write_all(file_bytes)
        .expect("fill memfd");
    let whole: &'static [u8] = Box::leak(whole.into_boxed_slice());
    let head: &'static [u8] = Box::leak(head.into_bytes().into_boxed_slice());
    let memfd: &'static std::os::fd::OwnedFd = Box::leak(Box::new(memfd));

    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = serve(stream, mode, head, whole, memfd, file_len).await;
        });
    }
}

/// Reads requests and answers each one, until the peer closes.
#[derive(Clone, Copy)]
enum Mode {
    /// Head and body copied from memory in one write.
    Copy,
    /// Head with MSG_MORE, then the body from a memfd with `sendfile`.
    Sendfile,
    /// Head and body, one after the other in a memfd, in one `sendfile`.
    Whole,
}

async fn serve(
    mut stream: TcpStream,
    mode: Mode,
    head: &[u8],
    whole: &[u8],
    memfd: &std::os::fd::OwnedFd,
    file_len: usize,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let n = stream.read_buf(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut start = 0;
        while let Some(end) = find_end(&buf[start..]) {
            start += end;
            match mode {
                Mode::Copy => stream.write_all(whole).await?,
                Mode::Sendfile => send_zero_copy(&mut stream, head, memfd, file_len).await?,
                Mode::Whole => send_zero_copy(&mut stream, b"", memfd, file_len).await?,
            }
        }
        buf.drain(..start);
    }
}

fn find_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Headers with MSG_MORE, then the body from the memfd with `sendfile`.
async fn send_zero_copy(
    stream: &mut TcpStream,
    head: &[u8],
    memfd: &std::os::fd::OwnedFd,
    size: usize,
) -> std::io::Result<()> {
    let mut sent = 0;
    while sent < head.len() {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || {
            rustix::net::send(stream.as_fd(), &head[sent..], rustix::net::SendFlags::MORE)
                .map_err(std::io::Error::from)
        }) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    let mut offset = 0u64;
    while (offset as usize) < size {
        stream.writable().await?;
        let left = size - offset as usize;
        match stream.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(stream.as_fd(), memfd, Some(&mut offset), left)
                .map_err(std::io::Error::from)
        }) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
