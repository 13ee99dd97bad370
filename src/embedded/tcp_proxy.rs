//! [`TcpProxy`]: a TCP proxy on 127.0.0.1 that tests put between botdb and PostgreSQL
//! to stage what a cloud failover behind a moved address, or a dropped route, looks like
//! to a client: the network goes silent. No FIN, no RST, no bytes.
//!
//! Stopping the server or killing a backend is not that: its kernel closes the socket
//! and the client sees EOF or a reset at once. Behind a moved address the old peer just
//! stops answering, and the client finds out only through its own timeouts. A firewall
//! rule would need root and act on the whole machine; this proxy acts per test.
//!
//! [`TcpProxy::silence`] silences every connection open at that moment, forever: nothing
//! more is forwarded either way, the bytes either end sends are read and dropped, and
//! both sockets are held open while the proxy lives. Because the proxy's kernel still
//! ACKs what the client sends (and its keepalive probes), TCP keepalive and
//! `TCP_USER_TIMEOUT` do not notice: only botdb's own timeouts can, which is what the
//! tests are for. Connections accepted while silenced are held silent too (never
//! connected upstream) until [`TcpProxy::heal`]; then new connections are forwarded
//! again, as a server answering again at the same address, and the silenced ones stay
//! silent.
//!
//! Each connection records the silence epoch it was opened in. Every write to either
//! end checks, under the read lock of the state that [`TcpProxy::silence`] changes under
//! its write lock, that the epoch has not moved: no byte is delivered once `silence`
//! has returned, even one read before it.

use std::future::{pending, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

const BUF: usize = 16 * 1024;

/// What [`TcpProxy::stats`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyStats {
    /// Connections accepted, in all.
    pub accepted: u64,
    /// Connections held silent, in all (silenced while open, or accepted while silenced).
    pub silenced: u64,
    /// Connections open now, forwarding or silent.
    pub open: u64,
}

/// A TCP proxy to one upstream address that can go silent (see the module docs). Stops
/// accepting and closes every connection, silent ones included, when dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

#[derive(Clone, Copy, Default)]
struct State {
    /// Bumped by each `silence`: connections opened in an older epoch are silent.
    epoch: u64,
    /// New connections are held silent (between `silence` and `heal`).
    silent_new: bool,
}

#[derive(Default)]
struct Shared {
    state: watch::Sender<State>,
    accepted: AtomicU64,
    silenced: AtomicU64,
    open: AtomicU64,
    /// Connections forwarding in the current epoch: `silence` moves them to `silenced`.
    forwarding: AtomicU64,
}

#[derive(PartialEq)]
enum Outcome {
    Ended,
    Silenced,
}

/// Counts a connection open until its task ends or is aborted.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, SeqCst);
    }
}

impl TcpProxy {
    /// Binds 127.0.0.1 on a free port and forwards each connection to `upstream`,
    /// connecting to it when the connection is accepted. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// If the listening socket cannot be bound.
    pub async fn start(upstream: SocketAddr) -> io::Result<TcpProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        Ok(TcpProxy { addr, shared, accept })
    }

    /// The address clients connect to (in place of the upstream's).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Silences, forever, every connection open now, and holds new ones silent until
    /// [`heal`](Self::heal). When it returns, no more bytes reach either end of them.
    pub fn silence(&self) {
        self.shared.state.send_modify(|state| {
            state.epoch += 1;
            state.silent_new = true;
            let forwarding = self.shared.forwarding.swap(0, SeqCst);
            self.shared.silenced.fetch_add(forwarding, SeqCst);
        });
    }

    /// Forwards new connections to the upstream again. Those silenced stay silent.
    pub fn heal(&self) {
        self.shared.state.send_modify(|state| state.silent_new = false);
    }

    /// The connections accepted, held silent and open so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            accepted: self.shared.accepted.load(SeqCst),
            silenced: self.shared.silenced.load(SeqCst),
            open: self.shared.open.load(SeqCst),
        }
    }
}

impl std::fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpProxy")
            .field("addr", &self.addr)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for TcpProxy {
    /// Aborts the accept loop, whose `JoinSet` aborts (and so closes) every connection.
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors, say: try again shortly rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        shared.accepted.fetch_add(1, SeqCst);
        shared.open.fetch_add(1, SeqCst);
        let guard = OpenGuard(shared.clone());
        connections.spawn(serve(client, upstream, shared.clone(), guard));
    }
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>, _open: OpenGuard) {
    let _ = client.set_nodelay(true);
    let epoch = {
        let state = shared.state.borrow();
        (!state.silent_new).then(|| {
            shared.forwarding.fetch_add(1, SeqCst);
            state.epoch
        })
    };
    let Some(epoch) = epoch else {
        shared.silenced.fetch_add(1, SeqCst);
        return hold(client, None).await;
    };
    let mut rx = shared.state.subscribe();
    let connected = tokio::select! {
        biased;
        () = silenced(&mut rx, epoch) => None,
        server = TcpStream::connect(upstream) => server.ok(),
    };
    let Some(mut server) = connected else {
        if !ended(&shared, epoch) {
            hold(client, None).await;
        }
        return;
    };
    let _ = server.set_nodelay(true);
    let outcome = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        tokio::select! {
            outcome = pump(client_read, server_write, &shared, epoch) => outcome,
            outcome = pump(server_read, client_write, &shared, epoch) => outcome,
        }
    };
    // Either end closing closes both, unless silenced meanwhile: then nothing closes.
    if outcome == Outcome::Silenced || !ended(&shared, epoch) {
        hold(client, Some(server)).await;
    }
}

/// Whether the connection of `epoch` may end (and is no longer counted as forwarding):
/// not if it was silenced, whatever happened to either end.
fn ended(shared: &Shared, epoch: u64) -> bool {
    let state = shared.state.borrow();
    let current = state.epoch == epoch;
    if current {
        shared.forwarding.fetch_sub(1, SeqCst);
    }
    current
}

/// Resolves once a `silence` after `epoch` happened.
async fn silenced(rx: &mut watch::Receiver<State>, epoch: u64) {
    let closed = rx.wait_for(|state| state.epoch != epoch).await.is_err();
    if closed {
        pending::<()>().await;
    }
}

/// Copies `from` to `to` until either fails or closes, or the connection is silenced.
async fn pump(mut from: ReadHalf<'_>, mut to: WriteHalf<'_>, shared: &Shared, epoch: u64) -> Outcome {
    let mut rx = shared.state.subscribe();
    let mut buf = vec![0u8; BUF];
    loop {
        let n = tokio::select! {
            biased;
            () = silenced(&mut rx, epoch) => return Outcome::Silenced,
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Outcome::Ended,
                Ok(n) => n,
            },
        };
        let mut data = &buf[..n];
        while !data.is_empty() {
            let written = tokio::select! {
                biased;
                () = silenced(&mut rx, epoch) => None,
                written = write(&mut to, data, shared, epoch) => written,
            };
            match written {
                None => return Outcome::Silenced,
                Some(Ok(0) | Err(_)) => return Outcome::Ended,
                Some(Ok(written)) => data = &data[written..],
            }
        }
    }
}

/// Writes unless the connection was silenced (`None`): the check and the write under
/// the state's read lock, which `silence` takes to write, so it waits for the write.
async fn write(
    to: &mut WriteHalf<'_>,
    data: &[u8],
    shared: &Shared,
    epoch: u64,
) -> Option<io::Result<usize>> {
    poll_fn(|cx| {
        let state = shared.state.borrow();
        if state.epoch != epoch {
            return Poll::Ready(None);
        }
        Pin::new(&mut *to).poll_write(cx, data).map(Some)
    })
    .await
}

/// Holds the sockets open, reading and dropping what comes, answering nothing, until
/// the task is aborted. An end that closed or failed is just no longer read.
async fn hold(mut client: TcpStream, mut server: Option<TcpStream>) {
    let server = async {
        if let Some(server) = &mut server {
            drain(server).await;
        }
    };
    tokio::join!(drain(&mut client), server);
}

async fn drain(stream: &mut TcpStream) {
    let mut buf = vec![0u8; BUF];
    while let Ok(1..) = stream.read(&mut buf).await {}
    pending::<()>().await;
}

#[cfg(test)]
mod tests {
    use std::io::Result;
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::timeout;

    use super::{ProxyStats, TcpProxy};

    async fn echo_server() -> Result<SocketAddr> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        Ok(addr)
    }

    async fn echoes(stream: &mut TcpStream, bytes: &[u8]) -> Result<()> {
        stream.write_all(bytes).await?;
        let mut buf = vec![0u8; bytes.len()];
        stream.read_exact(&mut buf).await?;
        assert_eq!(buf, bytes);
        Ok(())
    }

    /// Written, then neither answered nor closed (a read returning 0 would be a close).
    async fn is_silent(stream: &mut TcpStream) -> Result<bool> {
        stream.write_all(b"anyone there?").await?;
        let mut buf = [0u8; 64];
        Ok(timeout(Duration::from_millis(300), stream.read(&mut buf))
            .await
            .is_err())
    }

    #[tokio::test]
    async fn silence_stops_answers_without_closing() -> Result<()> {
        let proxy = TcpProxy::start(echo_server().await?).await?;
        let mut client = TcpStream::connect(proxy.addr()).await?;
        echoes(&mut client, b"ping").await?;
        proxy.silence();
        assert_eq!(proxy.stats().silenced, 1);
        assert!(is_silent(&mut client).await?);
        assert_eq!(
            proxy.stats(),
            ProxyStats {
                accepted: 1,
                silenced: 1,
                open: 1
            }
        );
        Ok(())
    }

    #[tokio::test]
    async fn heal_forwards_new_connections_only() -> Result<()> {
        let proxy = TcpProxy::start(echo_server().await?).await?;
        let mut old = TcpStream::connect(proxy.addr()).await?;
        echoes(&mut old, b"before").await?;
        proxy.silence();
        let mut during = TcpStream::connect(proxy.addr()).await?;
        assert!(is_silent(&mut during).await?);
        proxy.heal();
        let mut new = TcpStream::connect(proxy.addr()).await?;
        echoes(&mut new, b"after").await?;
        assert!(is_silent(&mut old).await?);
        assert!(is_silent(&mut during).await?);
        echoes(&mut new, b"still").await?;
        assert_eq!(
            proxy.stats(),
            ProxyStats {
                accepted: 3,
                silenced: 2,
                open: 3
            }
        );
        // Dropped, the proxy closes even its silent connections.
        drop(proxy);
        let mut buf = [0u8; 64];
        let closed = timeout(Duration::from_secs(2), old.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
        Ok(())
    }
}
