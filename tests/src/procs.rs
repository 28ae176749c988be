//! Child processes that never outlive the test process.
//!
//! Every child is spawned from one keeper thread that lives as long as the
//! process, with `PR_SET_PDEATHSIG = SIGKILL`: Linux ties the death signal
//! to the spawning *thread*, so spawning from a short-lived test thread
//! would kill the child early, and spawning without it would leak children
//! when a test binary is killed. [`Proc`] also kills its child on drop.

use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Request = (Command, mpsc::Sender<std::io::Result<Child>>);

fn keeper() -> &'static Mutex<mpsc::Sender<Request>> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("child-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The channel never closes (the sender is in a static), so
                // this thread, and with it the children's parent, stays.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn child-keeper thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` so that it dies with this process.
pub fn spawn(mut cmd: Command) -> std::io::Result<Proc> {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: prctl with PR_SET_PDEATHSIG is async-signal-safe and touches no
    // memory of the parent; this is the documented use of pre_exec.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    keeper().lock().unwrap_or_else(|e| e.into_inner()).send((cmd, tx)).map_err(std::io::Error::other)?;
    let child = rx.recv().map_err(std::io::Error::other)??;
    Ok(Proc { child: Some(child) })
}

/// A child process, killed and reaped on drop.
pub struct Proc {
    child: Option<Child>,
}

impl Proc {
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Has the process exited (and with what)?
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Asks the process to stop (SIGTERM), as a kubelet does, and waits up to
    /// `grace` for it to exit; kills it after that. `Some(status)` when it
    /// exited by itself.
    pub fn terminate(&mut self, grace: std::time::Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let pid = libc::pid_t::try_from(c.id()).ok()?;
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Stops the process now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Prints the last `lines` lines of `what`'s log at `path` (a failing test's
/// evidence).
pub fn print_log_tail(what: &str, path: &std::path::Path, lines: usize) {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    let tail = &all[all.len().saturating_sub(lines)..];
    eprintln!("----- {what} log (last {} lines, {}) -----", tail.len(), path.display());
    for l in tail {
        eprintln!("{l}");
    }
    eprintln!("----- end of {what} log -----");
}

/// When the test is failing: prints `what`'s log tail and keeps its
/// directory for inspection.
pub fn on_failure(what: &str, log: &std::path::Path, lines: usize, dir: &mut Option<tempfile::TempDir>) {
    if std::thread::panicking() {
        print_log_tail(what, log, lines);
        if let Some(d) = dir.take() {
            eprintln!("kept {what} directory for inspection: {}", d.keep().display());
        }
    }
}

/// Kills every child of this process, whichever thread spawned it (with
/// its process group when it leads one, as pilot-agent does with its
/// Envoy), and reaps it: what a process that exits without dropping its
/// handles (`make lab` when stopped) runs, so that nothing of it is left
/// running, or as a zombie, when its directories are removed. Children that
/// appear while it runs (spawned meanwhile, or orphans reparented to a
/// [`become_subreaper`] process) are taken in the next round, for a few
/// rounds. Returns how many children are still listed after the last.
pub fn kill_children() -> usize {
    // SAFETY: getpgrp(2) has no arguments and touches no memory.
    #[allow(unsafe_code)]
    let own_group = unsafe { libc::getpgrp() };
    for _ in 0..10 {
        let children = children();
        if children.is_empty() {
            return 0;
        }
        for pid in children {
            // SAFETY: kill(2), getpgid(2) and waitpid(2) on a child of this
            // process, listed as not yet reaped (if another thread reaps it
            // meanwhile, its pid is not handed out again that soon: the
            // kernel hands out pids in order); a null status pointer is allowed.
            #[allow(unsafe_code)]
            unsafe {
                let group = libc::getpgid(pid);
                if group == pid && group != own_group {
                    libc::kill(-group, libc::SIGKILL);
                }
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
    children().len()
}

/// Makes this process the reaper of its orphaned descendants
/// (`PR_SET_CHILD_SUBREAPER`): a grandchild whose parent dies (pilot-agent's
/// Envoy) becomes this process's child, so that [`kill_children`] reaps it
/// too instead of leaving it to init.
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl(2) with PR_SET_CHILD_SUBREAPER takes an integer flag and
    // touches no memory.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The pids of this process's children (`/proc/self/task/*/children`: a
/// child is listed under the thread that spawned it).
fn children() -> Vec<libc::pid_t> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    let mut pids: Vec<libc::pid_t> = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<_>>())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}
