//! The systemd service protocol and environment: readiness, status, watchdog and stopping
//! notifications over `$NOTIFY_SOCKET`, and the state, configuration and credentials
//! directories systemd hands a service. Without systemd, all of it is a no-op.

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Sends notifications to the service manager. Every send is best effort: a lost
/// notification must never take the daemon down.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: SocketAddr,
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`, or `None` when it is unset or unusable. A name
    /// starting with `@` is an abstract socket.
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        let name = name.to_str()?;
        match Self::connect(name) {
            Ok(notifier) => Some(notifier),
            Err(error) => {
                tracing::warn!(%error, socket = name, "NOTIFY_SOCKET is set but unusable; not notifying systemd");
                None
            }
        }
    }

    fn connect(name: &str) -> std::io::Result<Notifier> {
        let target = match name.strip_prefix('@') {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes())?,
            None => SocketAddr::from_pathname(name)?,
        };
        Ok(Notifier { socket: UnixDatagram::unbound()?, target })
    }

    fn send(&self, state: &str) {
        if let Err(error) = self.socket.send_to_addr(state.as_bytes(), &self.target) {
            tracing::debug!(%error, state, "sd_notify failed");
        }
    }

    /// The queue is open, recovery is done and the listener is bound.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// A one-line summary for `systemctl status`.
    pub fn status(&self, line: &str) {
        // A newline would end the assignment early and start a bogus one.
        self.send(&format!("STATUS={}", line.replace('\n', " ")));
    }

    /// The daemon's main loop is alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// Shutdown has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, if the watchdog is meant for
/// this process (`$WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// `$STATE_DIRECTORY` (its first entry): where systemd wants the service's state.
pub fn state_directory() -> Option<PathBuf> {
    first_path(std::env::var_os("STATE_DIRECTORY")?.to_str()?)
}

/// `$CONFIGURATION_DIRECTORY/jobd.toml`, if it exists.
pub fn configuration_file() -> Option<PathBuf> {
    let dir = first_path(std::env::var_os("CONFIGURATION_DIRECTORY")?.to_str()?)?;
    let file = dir.join("jobd.toml");
    file.is_file().then_some(file)
}

/// A secret from `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`), if present.
pub fn credential(name: &str) -> Option<String> {
    credential_in(Path::new(&std::env::var_os("CREDENTIALS_DIRECTORY")?), name)
}

/// The path of a credential file in `$CREDENTIALS_DIRECTORY`, if it exists.
pub fn credential_path(name: &str) -> Option<PathBuf> {
    let path = Path::new(&std::env::var_os("CREDENTIALS_DIRECTORY")?).join(name);
    path.is_file().then_some(path)
}

/// A secret file's content without its trailing newline, if the file exists and is not
/// empty.
pub fn credential_in(dir: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(name)).ok()?;
    let value = text.trim_end_matches(['\n', '\r']);
    (!value.is_empty()).then(|| value.to_owned())
}

/// systemd joins several directories with `:`; jobd uses the first.
fn first_path(list: &str) -> Option<PathBuf> {
    list.split(':').find(|entry| !entry.is_empty()).map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_read_from_files_without_their_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("aws_secret_access_key"), "s3cr3t\n").expect("write");
        std::fs::write(dir.path().join("empty"), "\n").expect("write");
        assert_eq!(credential_in(dir.path(), "aws_secret_access_key").as_deref(), Some("s3cr3t"));
        assert_eq!(credential_in(dir.path(), "empty"), None);
        assert_eq!(credential_in(dir.path(), "missing"), None);
    }

    #[test]
    fn notifications_reach_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).expect("bind");
        Notifier::connect(path.to_str().expect("utf-8")).expect("connect").status("queued 1\nrunning 2");
        let mut buffer = [0; 256];
        let length = listener.recv(&mut buffer).expect("recv");
        assert_eq!(&buffer[..length], b"STATUS=queued 1 running 2");

        let name = format!("jobd-unit-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract");
        let abstract_listener = UnixDatagram::bind_addr(&address).expect("bind abstract");
        Notifier::connect(&format!("@{name}")).expect("connect").ready();
        let length = abstract_listener.recv(&mut buffer).expect("recv");
        assert_eq!(&buffer[..length], b"READY=1");
    }

    #[test]
    fn systemd_directory_lists_use_their_first_entry() {
        assert_eq!(first_path("/var/lib/jobd:/var/lib/other"), Some(PathBuf::from("/var/lib/jobd")));
        assert_eq!(first_path(""), None);
    }
}
