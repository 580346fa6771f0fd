//! The listener every HTTP service here serves on. It hands each connection
//! to axum wrapped in [`ProblemIo`], which turns the answers the HTTP/1
//! parser (hyper) gives on its own, before any handler or middleware can
//! run, into RFC 9457 problems: a request line or header section it cannot
//! parse (`400`), a URI over its 64 KiB limit (`414`), more headers or
//! header bytes than it buffers (`431`). Hyper writes those as a bare head
//! with `content-length: 0`; nothing else here answers an error without a
//! body, so that head is recognised exactly and replaced.
//!
//! Requests within hyper's limits but over the service's own (smaller)
//! ones get their problems from the middleware in `http.rs`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::problem::Problem;

/// A TCP listener whose connections answer parser errors as problems (and
/// send small answers without Nagle's delay).
pub struct ProblemListener(TcpListener);

impl ProblemListener {
    pub fn new(listener: TcpListener) -> Self {
        Self(listener)
    }
}

impl axum::serve::Listener for ProblemListener {
    type Io = ProblemIo<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = axum::serve::Listener::accept(&mut self.0).await;
        let _ = io.set_nodelay(true);
        (ProblemIo::new(io), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A connection whose parser-error answers are rewritten (see the module).
pub struct ProblemIo<T> {
    inner: T,
    /// A rewritten answer still being written, and how much of it is out.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> ProblemIo<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: None,
        }
    }
}

/// The problem that replaces the bare head hyper writes for a parse error,
/// if `head` is one.
pub fn rewrite_parser_answer(head: &[u8]) -> Option<Vec<u8>> {
    const KNOWN: [(&[u8], u16, &str, &str, &str); 3] = [
        (
            b"HTTP/1.1 400 Bad Request\r\n",
            400,
            "malformed-request",
            "Malformed request",
            "the request line or a header could not be parsed",
        ),
        (
            b"HTTP/1.1 414 URI Too Long\r\n",
            414,
            "uri-too-long",
            "URI too long",
            "the request's URI is longer than the server reads",
        ),
        (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            431,
            "headers-too-large",
            "Request header fields too large",
            "the request has more headers, or more header bytes, than the server reads",
        ),
    ];
    let (line, status, slug, title, detail) =
        KNOWN.iter().find(|(line, ..)| head.starts_with(line))?;
    let bare = head.ends_with(b"\r\n\r\n")
        && head
            .windows(b"\r\ncontent-length: 0\r\n".len())
            .any(|w| w.eq_ignore_ascii_case(b"\r\ncontent-length: 0\r\n"));
    if !bare {
        return None;
    }
    let status = axum::http::StatusCode::from_u16(*status).ok()?;
    let body = Problem::new(status, slug, title, *detail)
        .to_json()
        .to_string();
    let mut out = Vec::with_capacity(line.len() + 200 + body.len());
    out.extend_from_slice(line);
    out.extend_from_slice(
        format!(
            "content-type: application/problem+json\r\nx-content-type-options: nosniff\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

impl<T: AsyncWrite + Unpin> ProblemIo<T> {
    /// Writes what is left of a rewritten answer; ready once all is out.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            let n =
                std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ProblemIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ProblemIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if let Some(answer) = rewrite_parser_answer(buf) {
            self.pending = Some((answer, 0));
            // The head counts as written; the problem goes out in its place.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if let [only] = bufs {
            if let Some(answer) = rewrite_parser_answer(only) {
                self.pending = Some((answer, 0));
                let _ = self.poll_pending(cx)?;
                return Poll::Ready(Ok(only.len()));
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_parsers_bare_heads_are_rewritten() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 16:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(rewrite_parser_answer(bare).unwrap()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 "));
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("content-type: application/problem+json"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], 431);
        // A problem of the service's own, or any other answer, is left alone.
        let own = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 120\r\n\r\n";
        assert!(rewrite_parser_answer(own).is_none());
        assert!(rewrite_parser_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(
            rewrite_parser_answer(b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n")
                .is_some()
        );
    }
}
