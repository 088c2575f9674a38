//! A TCP proxy that can cut a node off from its database: while cut, it closes every
//! connection through it and refuses new ones, without a reset reaching the server, as a
//! partition between one node and the database would.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often a relay looks at the cut flag while no bytes flow.
const LOOK_EVERY: Duration = Duration::from_millis(50);

/// The proxy; it stops with the test process.
pub struct CutProxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
}

impl CutProxy {
    /// A proxy on a free loopback port in front of `upstream_port` on loopback.
    pub fn start(upstream_port: u16) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else { continue };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else { continue };
                    let flag = flag.clone();
                    std::thread::spawn(move || copy_until_cut(from, to, &flag));
                }
            }
        });
        CutProxy { port, cut }
    }

    /// Cuts (or mends) the node's way to the database.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either side closes or the proxy is cut.
fn copy_until_cut(mut from: TcpStream, mut to: TcpStream, cut: &AtomicBool) {
    let _ = from.set_read_timeout(Some(LOOK_EVERY));
    let mut buffer = vec![0u8; 64 * 1024];
    while !cut.load(Ordering::SeqCst) {
        match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => {
                if cut.load(Ordering::SeqCst) || to.write_all(&buffer[..read]).is_err() {
                    break;
                }
            }
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
