//! TCP keepalives and `TCP_USER_TIMEOUT` on botdb's connections
//! ([`NetworkConfig`]), so that the kernel notices a server gone silent within seconds.
//!
//! sqlx opens the sockets itself and hands none of them out (keepalives are an open
//! request there: transact-rs/sqlx#3540, #4355). So after each new connection, botdb
//! looks through this process's open descriptors (`/proc/self/fd`) for TCP sockets
//! connected to the server's address that have no keepalive yet (sqlx never sets one:
//! such a socket was opened since the last look) and sets both on them. What this
//! reaches beyond botdb's own connections: another connection of the same process to
//! the same server address, opened by a driver that sets no keepalive, gets botdb's
//! settings too, which only makes a dead server noticed sooner.
//!
//! Linux only (`/proc`, `TCP_USER_TIMEOUT`); elsewhere nothing is set, and botdb's
//! own deadlines ([`NetworkConfig::round_trip`]) still bound every wait.

use std::net::SocketAddr;

use crate::config::NetworkConfig;

/// The addresses `hosts` resolve to, for [`tune`]; a host that does not resolve (or a
/// Unix socket directory) adds none.
pub(crate) async fn resolve(hosts: &[(String, u16)]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for (host, port) in hosts {
        if host.starts_with('/') {
            continue;
        }
        if let Ok(addrs) = tokio::net::lookup_host((host.as_str(), *port)).await {
            out.extend(addrs);
        }
    }
    out
}

/// Sets `network`'s keepalives and `TCP_USER_TIMEOUT` on every TCP socket of this
/// process connected to one of `peers` that has no keepalive yet; returns how many.
///
/// # Errors
/// Reading `/proc/self/fd`, or a socket refusing an option.
#[cfg(target_os = "linux")]
pub(crate) fn tune(peers: &[SocketAddr], network: &NetworkConfig) -> std::io::Result<usize> {
    use std::os::fd::BorrowedFd;

    if peers.is_empty() {
        return Ok(0);
    }
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(network.keepalives_idle)
        .with_interval(network.keepalives_interval)
        .with_retries(network.keepalives_count);
    let mut tuned = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        match std::fs::read_link(entry.path()) {
            Ok(target) if target.as_os_str().as_encoded_bytes().starts_with(b"socket:") => {}
            _ => continue,
        }
        // SAFETY: the descriptor is only borrowed to duplicate it at once. Closed in the
        // meantime, the duplication fails (EBADF); its number taken by another file in
        // the meantime, the duplicate is that file, which is checked below (a TCP socket
        // connected to the server) before anything is set on it. The duplicate keeps
        // the socket open while it is checked and set.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let Ok(owned) = borrowed.try_clone_to_owned() else {
            continue;
        };
        let socket = socket2::SockRef::from(&owned);
        let Some(peer) = socket.peer_addr().ok().and_then(|a| a.as_socket()) else {
            continue;
        };
        if !peers.contains(&peer) || socket.keepalive().unwrap_or(true) {
            continue;
        }
        if network.keepalives {
            socket.set_tcp_keepalive(&keepalive)?;
        }
        socket.set_tcp_user_timeout(network.tcp_user_timeout)?;
        tuned += 1;
    }
    Ok(tuned)
}

/// Elsewhere than Linux: nothing is set (see the module's documentation).
///
/// # Errors
/// Never.
#[cfg(not(target_os = "linux"))]
pub(crate) fn tune(_peers: &[SocketAddr], _network: &NetworkConfig) -> std::io::Result<usize> {
    Ok(0)
}
