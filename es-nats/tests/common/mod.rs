//! Helpers shared by the test files: the machine's NATS server (with a clear message when it
//! is not running), unique prefixes so tests never share a stream, and NATS servers of a test's
//! own (free port, temporary store directory) for the tests that restart or kill one.

#![allow(dead_code)] // Each test file uses its own part.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) mod ledger;

use es_nats::{EsNats, Storage, StreamSettings};

/// The machine's NATS server: `NATS_URL`, or 127.0.0.1:4222.
pub(crate) fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A prefix no other test (nor run) uses: `t<pid>x<counter><random>`.
pub(crate) fn unique_prefix(name: &str) -> String {
    format!(
        "t{}{}x{}",
        name.replace(['.', ' ', '*', '>'], "-"),
        std::process::id(),
        fastrand::u32(..)
    )
}

/// Connects to the machine's server with a fresh prefix (its own stream, memory storage).
/// The first call of a test process deletes the streams earlier test runs left on the server
/// (named after their prefixes, `T<name><pid>X<random>` and `DLQ_T...`) an hour after their
/// creation.
pub(crate) async fn connect(name: &str) -> EsNats {
    let url = nats_url();
    let prefix = unique_prefix(name);
    let settings = StreamSettings::for_prefix(&prefix).storage(Storage::Memory);
    let nats = EsNats::connect_with(&url, &prefix, settings)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "these tests need a NATS server with JetStream at {url}: start one with \
                 `nats-server -js` (or set NATS_URL): {error}"
            )
        });
    if !SWEPT.swap(true, std::sync::atomic::Ordering::SeqCst) {
        sweep_old_test_streams(&nats).await;
    }
    nats
}

static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a stream name is one a test made: `T<letters or dashes><digits>X<digits>`, or that
/// with `DLQ_` before it.
fn is_test_stream(name: &str) -> bool {
    let name = name.strip_prefix("DLQ_").unwrap_or(name);
    let Some(rest) = name.strip_prefix('T') else {
        return false;
    };
    let Some((head, random)) = rest.rsplit_once('X') else {
        return false;
    };
    let pid_start = head.find(|c: char| c.is_ascii_digit());
    !random.is_empty()
        && random.bytes().all(|b| b.is_ascii_digit())
        && pid_start.is_some_and(|start| {
            start > 0
                && head[..start]
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'-')
                && head[start..].bytes().all(|b| b.is_ascii_digit())
        })
}

async fn sweep_old_test_streams(nats: &EsNats) {
    use futures_util::StreamExt;
    let mut streams = nats.jetstream().streams();
    let mut old = Vec::new();
    while let Some(Ok(info)) = streams.next().await {
        let age = chrono::Utc::now() - info.created;
        if is_test_stream(&info.config.name) && age > chrono::Duration::hours(1) {
            old.push(info.config.name);
        }
    }
    for name in old {
        let _ = nats.jetstream().delete_stream(&name).await;
    }
}

#[test]
fn test_stream_names_are_recognised() {
    assert!(is_test_stream("TPUBLISH7128X1864159569"));
    assert!(is_test_stream("DLQ_TSIG-KILL42X7"));
    assert!(!is_test_stream("ORDERS"));
    assert!(!is_test_stream("TOTALS"));
    assert!(!is_test_stream("DLQ_ORDERS"));
    assert!(!is_test_stream("T42X7"));
}

/// A free TCP port on 127.0.0.1.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("the OS hands out a free port")
}

/// A `nats-server -js` of the test's own, on a free port with its store in a directory that
/// outlives restarts. Killed when dropped.
pub(crate) struct OwnServer {
    pub(crate) port: u16,
    pub(crate) store: PathBuf,
    child: Option<Child>,
}

impl OwnServer {
    /// Starts a server storing under `store`, and waits until it answers.
    pub(crate) fn start(store: &Path) -> Self {
        let mut server = Self {
            port: free_port(),
            store: store.to_owned(),
            child: None,
        };
        server.spawn();
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("starting `nats-server` failed (apt-get install nats-server): {error}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "own nats-server on port {} did not answer within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGKILL) and waits for it to exit.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port and store.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `look` every 20 ms until it yields a value, for at most `limit`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut look: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = look().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
