//! Test hosts as Linux network namespaces.
//!
//! A [`Lab`] is one isolated network: a "switch" namespace holding a bridge,
//! and hosts (namespaces) each joined to it by a veth pair, addressed from
//! 198.18.0.0/24 (the range reserved for network benchmark tests). Nothing
//! touches the machine's own namespace, so labs of parallel tests never
//! meet. Dropping the lab stops the processes it started (by PID) and
//! deletes its namespaces.
//!
//! Code runs inside a host in two ways: child processes ([`Host::command`],
//! optionally as another UID), and async tasks on a runtime whose one
//! thread has entered the namespace ([`Host::rt`]); sockets those tasks
//! open live in the host's namespace.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, setgid, setgroups, setuid};

static LABS: AtomicUsize = AtomicUsize::new(0);

/// Where tests put Services' cluster IPs (inside 198.18.0.0/15, like every
/// test address).
pub const SERVICE_CIDR: &str = "198.19.0.0/16";

/// Set (as CI does) to make a missing netns capability a failure, not a skip.
pub const REQUIRE_ENV: &str = "WEFT_REQUIRE_NETNS";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process can build labs; if not, why.
pub fn unavailable() -> Option<String> {
    if !Uid::effective().is_root() {
        return Some("not running as root".into());
    }
    for tool in ["ip", "iptables-nft-restore"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            return Some(format!(
                "{tool} is not installed (apt-get install iproute2 iptables)"
            ));
        }
    }
    None
}

/// One isolated test network.
/// Whether `test` can build network namespaces here; when not, says so
/// loudly (or, with `WEFT_REQUIRE_NETNS=1`, panics).
pub fn available_for(test: &str) -> bool {
    let Some(why) = unavailable() else {
        return true;
    };
    if std::env::var_os(REQUIRE_ENV).is_some() {
        panic!("{test}: network namespace tests are required here but cannot run: {why}");
    }
    crate::skip_loudly(&format!(
        "{test}: needs network namespaces ({why}). Run the tests as root to include it."
    ));
    false
}

pub struct Lab {
    prefix: String,
    switch: String,
    namespaces: Mutex<Vec<String>>,
    children: Mutex<Vec<Child>>,
    next_port: AtomicUsize,
}

impl Lab {
    /// Builds an empty lab, or returns `None` (after saying so loudly) when
    /// this machine cannot: not root, or tools missing. With
    /// `WEFT_REQUIRE_NETNS=1` that is a panic instead.
    pub fn new(test: &str) -> Option<Arc<Lab>> {
        if !available_for(test) {
            return None;
        }
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("weft-test-{}-{n}", std::process::id());
        let switch = format!("{prefix}-sw");
        let lab = Lab {
            prefix,
            switch: switch.clone(),
            namespaces: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
            next_port: AtomicUsize::new(1),
        };
        lab.add_ns(&switch);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]).expect("bridge");
        ip(&["-n", &switch, "link", "set", "br0", "up"]).expect("bridge up");
        Some(Arc::new(lab))
    }

    fn add_ns(&self, name: &str) {
        ip(&["netns", "add", name]).expect("ip netns add");
        self.namespaces.lock().unwrap().push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]).expect("lo up");
    }

    /// Adds a host at 198.18.0.`last_octet`/24.
    pub fn host(self: &Arc<Self>, name: &str, last_octet: u8) -> Host {
        let ns = format!("{}-{name}", self.prefix);
        self.add_ns(&ns);
        let port = format!("v{}", self.next_port.fetch_add(1, Ordering::Relaxed));
        ip(&[
            "-n",
            &self.switch,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ])
        .expect("veth pair");
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ])
        .expect("attach to bridge");
        let addr = Ipv4Addr::new(198, 18, 0, last_octet);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])
        .expect("address");
        ip(&["-n", &ns, "link", "set", "eth0", "up"]).expect("eth0 up");
        // Service cluster IPs (virtual, as in Kubernetes) are routed to the
        // bridge; a meshed pod's proxy intercepts them before they leave.
        ip(&["-n", &ns, "route", "add", SERVICE_CIDR, "dev", "eth0"]).expect("service route");
        Host {
            lab: self.clone(),
            ns,
            ip: addr,
        }
    }

    /// Keeps `child` so it is stopped when the lab is dropped.
    pub fn adopt(&self, child: Child) -> u32 {
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// Starts capturing every TCP packet crossing the lab's switch into a
    /// pcap file (tcpdump on every switch port; packet-buffered, so a stop loses
    /// nothing).
    pub fn capture(&self, file: &std::path::Path) -> u32 {
        let _ = std::fs::remove_file(file);
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.switch,
                "tcpdump",
                "-i",
                "any",
                "--immediate-mode",
                "-Z",
                "root",
                "-U",
                "-n",
                "-s",
                "0",
                "-w",
            ])
            .arg(file)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump (apt-get install tcpdump)");
        let pid = self.adopt(child);
        // tcpdump creates the file once it is capturing.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !file.exists() {
            assert!(Instant::now() < deadline, "tcpdump did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        pid
    }

    /// Sends SIGTERM to an adopted process and waits for it to exit; its
    /// exit code (None if killed by a signal or still running after `wait`).
    pub fn terminate(&self, pid: u32, wait: Duration) -> Option<i32> {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        self.wait_exit(pid, wait)
    }

    /// Kills an adopted process at once (SIGKILL), as a crash would.
    pub fn kill(&self, pid: u32) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        let _ = self.wait_exit(pid, Duration::from_secs(5));
    }

    /// Whether an adopted process is still running.
    pub fn is_running(&self, pid: u32) -> bool {
        let mut children = self.children.lock().unwrap();
        children
            .iter_mut()
            .find(|c| c.id() == pid)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for an adopted process to exit by itself; its exit code.
    pub fn wait_exit(&self, pid: u32, wait: Duration) -> Option<i32> {
        let deadline = Instant::now() + wait;
        loop {
            {
                let mut children = self.children.lock().unwrap();
                if let Some(i) = children.iter().position(|c| c.id() == pid)
                    && let Ok(Some(status)) = children[i].try_wait()
                {
                    // Already reaped by try_wait; wait() just returns it again.
                    let _ = children.remove(i).wait();
                    return status.code();
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut children = std::mem::take(&mut *self.children.lock().unwrap());
        for c in &children {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for c in &mut children {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.lock().unwrap().iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// A host of a lab: one network namespace with one address.
pub struct Host {
    lab: Arc<Lab>,
    pub ns: String,
    pub ip: Ipv4Addr,
}

fn ns_file(ns: &str) -> File {
    File::open(format!("/var/run/netns/{ns}")).unwrap_or_else(|e| panic!("open netns {ns}: {e}"))
}

impl Host {
    pub fn lab(&self) -> &Arc<Lab> {
        &self.lab
    }

    /// A command that runs inside this host, as `uid` (and gid) if given.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, uid: Option<u32>) -> Command {
        let ns = ns_file(&self.ns);
        let mut cmd = Command::new(program);
        // SAFETY: only async-signal-safe system calls run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = BorrowedFd::borrow_raw(ns.as_raw_fd());
                setns(fd, CloneFlags::CLONE_NEWNET)?;
                if let Some(uid) = uid {
                    setgroups(&[])?;
                    setgid(Gid::from_raw(uid))?;
                    setuid(Uid::from_raw(uid))?;
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs a command in this host to completion; panics with its output
    /// if it fails.
    pub fn run(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
        let out = self
            .command(program, None)
            .args(args)
            .output()
            .expect("spawn");
        assert!(
            out.status.success(),
            "{args:?} failed in {}: {}{}",
            self.ns,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A tokio runtime whose thread lives in this host's namespace.
    pub fn rt(&self) -> NsRuntime {
        NsRuntime::enter(&self.ns, 1)
    }

    /// A tokio runtime with `threads` worker threads, all in this host's
    /// namespace (for load generators and servers under load).
    pub fn rt_threads(&self, threads: usize) -> NsRuntime {
        NsRuntime::enter(&self.ns, threads)
    }
}

/// A single-threaded tokio runtime inside a network namespace. Spawn tasks
/// on it with [`NsRuntime::spawn`] and await their handles from anywhere.
pub struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    fn enter(ns: &str, threads: usize) -> Self {
        let file = Arc::new(ns_file(ns));
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            setns(&*file, CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = if threads <= 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                // Every worker (and blocking) thread enters the namespace.
                let file = file.clone();
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .on_thread_start(move || {
                        setns(&*file, CloneFlags::CLONE_NEWNET).expect("setns")
                    })
                    .enable_all()
                    .build()
            }
            .expect("runtime");
            tx.send(rt.handle().clone()).expect("send handle");
            rt.block_on(async {
                let _ = stopped.await;
            });
        });
        let handle = rx.recv().expect("runtime handle");
        Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }

    /// Runs `fut` in the namespace and waits for its result.
    pub async fn run<F>(&self, fut: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn(fut).await.expect("task in namespace panicked")
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
