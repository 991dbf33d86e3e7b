//! The control socket server: accepts connections on a Unix socket (mode
//! 0600 in a 0700 directory, so only root can talk to the switch) and
//! hands each request line to the switch state.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use super::api::{decode_request, ApiError, ErrorCode, Reply, Request, Response};

/// What answers the control API's requests (the daemon's switch state; a
/// fake in tests): the server parses, frames and serializes, the handler
/// decides.
pub trait Handler: Send + 'static {
    /// Carries out one decoded request: its reply (the response's
    /// `result`), or the error it reports.
    fn handle(&mut self, req: Request) -> Result<Reply, ApiError>;
}

/// How often a waiting control thread looks at the shutdown flag.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(250);

/// Longest request line accepted (a full topology of thousands of pods fits).
pub const MAX_REQUEST: u64 = 16 * 1024 * 1024;

/// A bound control socket.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path`, replacing a stale socket left by a dead switch but
    /// refusing to take over one a live switch answers on.
    pub fn bind(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("chmod 0700 {}", dir.display()))?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                anyhow::bail!("another switch is already listening on {}", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding control socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        listener
            .set_nonblocking(true)
            .context("control socket non-blocking")?;
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serves until `shutdown`; one thread per connection. Waits for a
    /// connection in epoll, waking every [`SHUTDOWN_CHECK`] to look at
    /// `shutdown` (an idle switch's control thread costs 4 wake-ups a
    /// second, where sleeping 20 ms between tries cost 50).
    pub fn serve<H: Handler>(self, state: Arc<Mutex<H>>, shutdown: Arc<AtomicBool>) {
        use std::os::fd::AsRawFd;
        let fd = self.listener.as_raw_fd();
        let poll = mio::Poll::new().and_then(|p| {
            p.registry().register(
                &mut mio::unix::SourceFd(&fd),
                mio::Token(0),
                mio::Interest::READABLE,
            )?;
            Ok(p)
        });
        let mut poll = match poll {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "control socket: no epoll, polling every 20 ms");
                None
            }
        };
        let mut events = mio::Events::with_capacity(4);
        while !shutdown.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let st = Arc::clone(&state);
                    let _ = std::thread::Builder::new()
                        .name("psw-control-conn".into())
                        .spawn(move || serve_conn(stream, st));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => match poll.as_mut() {
                    // Edge-triggered: the accept above drained the backlog.
                    Some(p) => {
                        let _ = p.poll(&mut events, Some(SHUTDOWN_CHECK));
                    }
                    None => std::thread::sleep(Duration::from_millis(20)),
                },
                Err(e) => {
                    tracing::warn!(error = %e, socket = %self.path.display(), "accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

fn serve_conn<H: Handler>(stream: UnixStream, state: Arc<Mutex<H>>) {
    let _ = stream.set_nonblocking(false);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match (&mut reader).take(MAX_REQUEST).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let resp = if !line.ends_with('\n') && line.len() as u64 >= MAX_REQUEST {
            Response::refusal(ApiError::new(
                ErrorCode::BadRequest,
                format!("request longer than {MAX_REQUEST} bytes"),
            ))
        } else {
            Response::answer(
                decode_request(line.trim_end()).and_then(|req| match state.lock() {
                    Ok(mut st) => st.handle(req),
                    Err(_) => Err(ApiError::internal(
                        "switch state poisoned by an earlier panic",
                    )),
                }),
            )
        };
        let mut out =
            serde_json::to_string(&resp).unwrap_or_else(|_| r#"{"ok":false}"#.to_string());
        out.push('\n');
        if writer.write_all(out.as_bytes()).is_err() {
            return;
        }
        if line.len() as u64 >= MAX_REQUEST {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podswitch_api::Hello;

    /// A handler that answers `hello` with how many requests it was asked
    /// so far (as its worker count) and refuses everything else.
    struct Fake {
        seen: usize,
    }

    impl Handler for Fake {
        fn handle(&mut self, req: Request) -> Result<Reply, ApiError> {
            self.seen += 1;
            match req {
                Request::Hello => Ok(Reply::Hello(Hello {
                    api_version: podswitch_api::API_VERSION,
                    switch_version: "test".into(),
                    node: "fake".into(),
                    workers: self.seen,
                })),
                _ => Err(ApiError::new(ErrorCode::BadRequest, "only hello here")),
            }
        }
    }

    #[test]
    fn requests_reach_the_handler_and_errors_come_back() {
        let dir = std::env::temp_dir().join(format!("psw-ctl-test-{}", std::process::id()));
        let path = dir.join("ctl.sock");
        let server = ControlServer::bind(&path).unwrap();
        let shutdown = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(Fake { seen: 0 }));
        let (s, st) = (Arc::clone(&shutdown), Arc::clone(&state));
        let thread = std::thread::spawn(move || server.serve(st, s));
        let mut client =
            podswitch_api::client::Client::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(client.hello().unwrap().workers, 1);
        let err = client.get_nodes().unwrap_err();
        assert!(err.to_string().contains("only hello here"), "{err}");
        // The line as the server writes it, byte for byte: keys sorted,
        // as they were when the handler built a `serde_json::Value`.
        let mut raw = UnixStream::connect(&path).unwrap();
        raw.write_all(b"{\"v\":1,\"op\":\"hello\"}\n").unwrap();
        let mut line = String::new();
        BufReader::new(&raw).read_line(&mut line).unwrap();
        assert_eq!(
            line,
            format!(
                "{{\"ok\":true,\"result\":{{\"api_version\":{},\"node\":\"fake\",\"switch_version\":\"test\",\"workers\":3}}}}\n",
                podswitch_api::API_VERSION
            )
        );
        drop(raw);
        shutdown.store(true, Ordering::SeqCst);
        drop(client);
        thread.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
