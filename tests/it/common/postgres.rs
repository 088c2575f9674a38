//! A private PostgreSQL cluster for the tests: `initdb` into a temporary directory (as the
//! unprivileged `postgres` user when the tests run as root), then `postgres` on a free
//! loopback port. It never uses a server that happens to run on the machine. A watchdog
//! shell stops the server and removes its directory should the test process die without
//! dropping it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to accept connections; a safety net, not a measurement.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// A running private cluster; stopped and removed when dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    pub port: u16,
    server: Option<Child>,
    watchdog: Child,
    /// The user the server runs as, when the tests run as root.
    run_as: Option<String>,
    /// Whether the server fsyncs its WAL: off for the tests, on for the benchmark.
    fsync: bool,
    /// Whether the server offers TLS, with a certificate for localhost from a test CA.
    tls: bool,
    /// The address the server listens on, and the network namespace it runs in, if any.
    pub host: String,
    netns: Option<String>,
}

/// The directory of Debian's PostgreSQL server programs, the newest version installed.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/test.sh installs Debian's postgresql)")
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort_by_key(|bin| {
        bin.parent().and_then(|version| version.file_name()?.to_str()?.parse::<u32>().ok()).unwrap_or(0)
    });
    versions.pop().expect("an initdb under /usr/lib/postgresql/*/bin")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Cluster {
    /// Creates and starts a cluster whose superuser `jobd` connects without a password
    /// from loopback. It does not fsync: the tests check jobd, not the disk.
    pub fn start() -> Cluster {
        Self::start_with(false, None)
    }

    /// A cluster whose server runs in `netns`, listening on its address only, so that
    /// the test can make it vanish ([`super::netns::Netns::set_cut`]).
    pub fn start_in_netns(netns: &super::netns::Netns) -> Cluster {
        Self::start_where(false, None, Some(netns))
    }

    /// The same, with PostgreSQL's default durability (fsync on), for measurements.
    pub fn start_durable() -> Cluster {
        Self::start_with(true, None)
    }

    /// A cluster with `ssl=on`, whose certificate (for `localhost` and `127.0.0.1`) the
    /// test CA `pki` signed.
    pub fn start_tls(pki: &super::pki::TestPki) -> Cluster {
        Self::start_with(false, Some(pki))
    }

    fn start_with(fsync: bool, pki: Option<&super::pki::TestPki>) -> Cluster {
        Self::start_where(fsync, pki, None)
    }

    fn start_where(fsync: bool, pki: Option<&super::pki::TestPki>, netns: Option<&super::netns::Netns>) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let run_as = nix::unistd::geteuid().is_root().then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            let user = nix::unistd::User::from_name(user).expect("user lookup").expect("a postgres user");
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).expect("chown the cluster dir");
        }
        let data = dir.path().join("data");
        let mut cluster = Cluster {
            port: free_port(),
            dir,
            server: None,
            watchdog: spawn_dummy(),
            run_as,
            fsync,
            tls: pki.is_some(),
            host: netns.map_or_else(|| "127.0.0.1".to_owned(), |netns| netns.address.clone()),
            netns: netns.map(|netns| netns.name.clone()),
        };
        let status = cluster
            .command("initdb")
            .args(["-D", data.to_str().expect("utf-8"), "-U", "jobd", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed");
        if let Some(pki) = pki {
            cluster.write_server_certificate(pki);
        }
        if netns.is_some() {
            // Clients come from the host's end of the link, which initdb's loopback-only
            // pg_hba.conf would refuse.
            let hba = data.join("pg_hba.conf");
            let mut rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
            rules.push_str("\nhost all all 10.213.0.0/16 trust\n");
            std::fs::write(&hba, rules).expect("write pg_hba.conf");
        }
        cluster.watchdog = cluster.spawn_watchdog();
        cluster.start_server();
        cluster
    }

    /// Writes `server.crt` and `server.key` into the data directory, owned by the server's
    /// user with the key readable by it alone, as PostgreSQL demands.
    fn write_server_certificate(&self, pki: &super::pki::TestPki) {
        use std::os::unix::fs::PermissionsExt as _;
        let (cert, key) = (self.data_dir().join("server.crt"), self.data_dir().join("server.key"));
        pki.write_leaf(&cert, &key);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod the key");
        if let Some(user) = &self.run_as {
            let user = nix::unistd::User::from_name(user).expect("user lookup").expect("a postgres user");
            for path in [&cert, &key] {
                nix::unistd::chown(path, Some(user.uid), Some(user.gid)).expect("chown the certificate");
            }
        }
    }

    /// Sends `signal` (`STOP` or `CONT`) to the server and every process it started: with
    /// `STOP`, the database stalls without an error, as on an I/O freeze.
    pub fn signal_server(&self, signal: &str) {
        let pid = self.server_pid().expect("the server runs").to_string();
        let children = Command::new("pgrep").args(["-P", &pid]).output().expect("pgrep");
        let mut pids: Vec<String> =
            String::from_utf8_lossy(&children.stdout).split_whitespace().map(str::to_owned).collect();
        // The postmaster first on STOP, so it starts nothing meanwhile; last on CONT.
        if signal == "STOP" {
            pids.insert(0, pid);
        } else {
            pids.push(pid);
        }
        let status = Command::new("kill").arg(format!("-{signal}")).args(&pids).status().expect("kill");
        assert!(status.success(), "kill -{signal} {pids:?}");
    }

    /// A command for one of the server programs, as the cluster's user.
    fn command(&self, program: &str) -> Command {
        let path = bin_dir().join(program);
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]);
                command
            }
            None => Command::new(if self.run_as.is_some() { "setpriv" } else { "env" }),
        };
        if self.netns.is_some() {
            command.arg(if self.run_as.is_some() { "setpriv" } else { "env" });
        }
        if let Some(user) = &self.run_as {
            command.args(["--reuid", user, "--regid", user, "--init-groups", "--"]);
        }
        command.arg(path);
        command
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops the server, and removes the directory, once this process is gone.
    fn spawn_watchdog(&self) -> Child {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             pkill -INT -f -- '-D {data}' ; sleep 3; rm -rf '{dir}'",
            pid = std::process::id(),
            data = self.data_dir().display(),
            dir = self.dir.path().display(),
        );
        Command::new("sh").args(["-c", &script]).stdin(Stdio::null()).spawn().expect("start the watchdog")
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start_server(&mut self) {
        assert!(self.server.is_none(), "the server is running");
        let log = std::fs::File::create(self.dir.path().join(format!("server-{}.log", self.port)))
            .or_else(|_| std::fs::File::create("/dev/null"))
            .expect("server log");
        let server = self
            .command("postgres")
            .args(["-D", self.data_dir().to_str().expect("utf-8")])
            .args(["-p", &self.port.to_string()])
            .args(["-c", &format!("listen_addresses={}", self.host)])
            .args(["-c", &format!("unix_socket_directories={}", self.dir.path().display())])
            .args(["-c", "max_connections=300"])
            .args(if self.tls { ["-c", "ssl=on"].as_slice() } else { [].as_slice() })
            // Without fsync (the tests), commits still wait for their WAL write, so a
            // restart of the server keeps every commit.
            .args(["-c", if self.fsync { "fsync=on" } else { "fsync=off" }])
            // For measurements, the memory and WAL settings of a server run for a queue
            // rather than Debian's minimal defaults (128 MB of buffers, 4 MB of WAL
            // buffers), under which large transactions write WAL themselves.
            .args(if self.fsync {
                ["-c", "shared_buffers=1GB", "-c", "wal_buffers=64MB", "-c", "max_wal_size=8GB"].as_slice()
            } else {
                [].as_slice()
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.server = Some(server);
        let deadline = Instant::now() + READY_DEADLINE;
        while off_runtime(|| postgres::Client::connect(&self.url("postgres"), postgres::NoTls).is_err()) {
            assert!(Instant::now() < deadline, "postgres did not start; see {}", self.dir.path().display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast shutdown: connections are cut, commits kept).
    pub fn stop_server(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = Command::new("kill").args(["-INT", &server.id().to_string()]).status();
            let _ = server.wait();
        }
    }

    /// The URL of `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgresql://jobd@{}:{}/{database}", self.host, self.port)
    }

    /// Creates a new empty database and returns its URL.
    pub fn new_database(&self) -> String {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!("jobd_{}_{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let admin = self.url("postgres");
        sql(&admin, |client| client.batch_execute(&format!("CREATE DATABASE {name}")).expect("create database"));
        self.url(&name)
    }

    /// Writes every dirty buffer now (`CHECKPOINT`), so that a measurement that follows
    /// does not pay for an earlier one's writes.
    pub fn checkpoint(&self) {
        sql(&self.url("postgres"), |client| client.batch_execute("CHECKPOINT").expect("checkpoint"));
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's process id, while it runs.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }
}

/// Runs `work` on a thread of its own: the synchronous client runs a runtime of its own,
/// which must not start inside the tests' async runtime.
fn off_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(work).join().expect("the client thread panicked"))
}

/// Runs `work` with a client of `url`, for checks behind jobd's back.
pub fn sql<T: Send>(url: &str, work: impl FnOnce(&mut postgres::Client) -> T + Send) -> T {
    off_runtime(|| {
        let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
        work(&mut client)
    })
}

/// The first column of the first row of `query`, a count or such.
pub fn scalar(url: &str, query: &str) -> i64 {
    sql(url, |client| client.query_one(query, &[]).expect("query").get(0))
}

/// A placeholder child until the real watchdog starts.
fn spawn_dummy() -> Child {
    Command::new("true").spawn().expect("spawn true")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_server();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// A TCP proxy in front of a cluster that, once armed, cuts the connection of jobd's
/// ingest lane (its application name ends in `(ingest)`) right after the next `COMMIT`
/// reached the server and before its answer comes back: the commit happens, and jobd
/// never hears of it. While blocked, it cuts every ingest connection at its next message.
pub struct CommitCutter {
    pub port: u16,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    blocked: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// How many commits it cut.
    pub cut: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CommitCutter {
    pub fn start(upstream_port: u16) -> CommitCutter {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("addr").port();
        let armed = Arc::new(AtomicBool::new(false));
        let blocked = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicUsize::new(0));
        let (armed_for_thread, blocked_for_thread, cut_for_thread) = (armed.clone(), blocked.clone(), cut.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream_port)) else { continue };
                let (armed, blocked, cut) =
                    (armed_for_thread.clone(), blocked_for_thread.clone(), cut_for_thread.clone());
                std::thread::spawn(move || relay(client, server, &armed, &blocked, &cut));
            }
        });
        CommitCutter { port, armed, blocked, cut }
    }

    /// Cuts the ingest lane's connections, and refuses its new ones, until unblocked.
    pub fn block_ingest(&self, blocked: bool) {
        self.blocked.store(blocked, std::sync::atomic::Ordering::SeqCst);
    }

    /// Cuts the ingest lane's next commit.
    pub fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies one connection both ways; see [`CommitCutter`].
fn relay(
    mut client: std::net::TcpStream,
    mut server: std::net::TcpStream,
    armed: &std::sync::atomic::AtomicBool,
    blocked: &std::sync::atomic::AtomicBool,
    cut: &std::sync::atomic::AtomicUsize,
) {
    use std::io::{Read as _, Write as _};
    use std::sync::atomic::Ordering;
    let (Ok(mut server_reader), Ok(mut client_writer)) = (server.try_clone(), client.try_clone()) else { return };
    // Set before the commit is sent, so the relay of answers, which reads the commit's
    // answer only after that, drops it.
    let cutting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cutting_answers = cutting.clone();
    let answers = std::thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(read) = server_reader.read(&mut buffer) {
            if read == 0 || cutting_answers.load(Ordering::SeqCst) || client_writer.write_all(&buffer[..read]).is_err()
            {
                break;
            }
        }
    });
    let commit: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";
    let mut ingest = false;
    let mut buffer = vec![0u8; 64 * 1024];
    while let Ok(read) = client.read(&mut buffer) {
        if read == 0 {
            break;
        }
        let chunk = &buffer[..read];
        ingest |= chunk.windows(8).any(|window| window == b"(ingest)");
        if ingest && blocked.load(Ordering::SeqCst) {
            break;
        }
        let cut_now = ingest
            && chunk.windows(commit.len()).any(|window| window == commit)
            && armed.compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst).is_ok();
        if cut_now {
            cutting.store(true, Ordering::SeqCst);
        }
        if server.write_all(chunk).is_err() {
            break;
        }
        if cut_now {
            // The server commits; its answer is dropped, then both sides are cut.
            std::thread::sleep(Duration::from_millis(200));
            cut.fetch_add(1, Ordering::SeqCst);
            break;
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = server.shutdown(std::net::Shutdown::Both);
    let _ = answers.join();
}
