//! Shared helpers for the netns integration tests: run the real
//! `podswitch` binary, bring labs up under unique names, tear them down on
//! drop (also when a test panics).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_podswitch"))
}

/// Whether datapath tests can run: skip without root, fail instead when
/// PODSWITCH_REQUIRE_ROOT=1 (CI).
pub fn require_root() -> bool {
    podswitch_switch::testing::have_root("this netns integration test")
}

/// Runs podswitch with `args` and returns its output.
pub fn podswitch(args: &[&str]) -> Output {
    Command::new(exe())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run podswitch")
}

/// Like [`podswitch`] but panics with the output unless it succeeded.
pub fn podswitch_ok(args: &[&str]) -> String {
    let out = podswitch(args);
    assert!(
        out.status.success(),
        "podswitch {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A lab that is torn down when dropped.
pub struct TestLab {
    pub name: String,
}

impl TestLab {
    /// Brings up the default lab with extra `lab up` arguments.
    pub fn up_with(tag: &str, extra: &[&str]) -> TestLab {
        let name = format!(
            "t{}{}-{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::SeqCst),
            tag
        );
        let name: String = name.chars().take(24).collect();
        let lab = TestLab { name };
        let mut args = vec!["lab", "up", "--name", &lab.name];
        args.extend_from_slice(extra);
        podswitch_ok(&args);
        lab
    }

    /// `lab exec --node NODE -- CMD...`
    pub fn exec_node(&self, node: &str, cmd: &[&str]) -> Output {
        let mut a = vec!["lab", "--name", &self.name, "exec", "--node", node, "--"];
        a.extend_from_slice(cmd);
        podswitch(&a)
    }

    /// Pods as (name, ip, node), sorted by IP.
    pub fn pods_with_nodes(&self) -> Vec<(String, String, String)> {
        let v: serde_json::Value =
            serde_json::from_str(&self.run_ok(&["get", "pods", "-o", "json"])).expect("json");
        let mut pods: Vec<(String, String, String)> = v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap().to_string(),
                    p["status"]["podIP"].as_str().unwrap().to_string(),
                    p["spec"]["nodeName"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        pods.sort_by_key(|(_, ip, _)| ip.parse::<std::net::Ipv4Addr>().unwrap());
        pods
    }

    /// Brings up the default lab (or `file`) under a unique name.
    pub fn up(tag: &str, file: Option<&str>) -> TestLab {
        match file {
            Some(f) => Self::up_with(tag, &["-f", f]),
            // The default lab has two nodes; these tests want one.
            None => Self::up_with(tag, &["--nodes", "1"]),
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut a = vec!["lab", "--name", &self.name];
        a.extend_from_slice(args);
        podswitch(&a)
    }

    pub fn run_ok(&self, args: &[&str]) -> String {
        let mut a = vec!["lab", "--name", &self.name];
        a.extend_from_slice(args);
        podswitch_ok(&a)
    }

    /// `lab exec POD -- CMD...`
    pub fn exec(&self, pod: &str, cmd: &[&str]) -> Output {
        let mut a = vec!["lab", "--name", &self.name, "exec", pod, "--"];
        a.extend_from_slice(cmd);
        podswitch(&a)
    }

    /// Runs a `podswitch tool` inside a pod and parses its JSON line.
    pub fn tool(&self, pod: &str, args: &[&str]) -> serde_json::Value {
        let exe = exe();
        let mut cmd = vec![exe.to_str().expect("utf-8 path"), "tool"];
        cmd.extend_from_slice(args);
        let out = self.exec(pod, &cmd);
        assert!(
            out.status.success(),
            "tool {args:?} in {pod} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "tool output not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Starts a `podswitch tool` inside a pod in the background.
    pub fn spawn_tool(&self, pod: &str, args: &[&str]) -> Child {
        let exe = exe();
        Command::new(&exe)
            .args([
                "lab",
                "--name",
                &self.name,
                "exec",
                pod,
                "--",
                exe.to_str().expect("utf-8"),
                "tool",
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tool")
    }

    /// `lab get pods -o json` as (name, ip) pairs, sorted by IP.
    pub fn pods(&self) -> Vec<(String, String)> {
        let v: serde_json::Value =
            serde_json::from_str(&self.run_ok(&["get", "pods", "-o", "json"])).expect("json");
        let mut pods: Vec<(String, String)> = v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap().to_string(),
                    p["status"]["podIP"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        pods.sort_by_key(|(_, ip)| ip.parse::<std::net::Ipv4Addr>().unwrap());
        pods
    }

    pub fn socket(&self, node: &str) -> String {
        format!("/run/podswitch/lab/{}/{node}.sock", self.name)
    }

    /// `ctl stats -o json` of a node's switch.
    pub fn stats(&self, node: &str) -> serde_json::Value {
        let out = podswitch_ok(&["ctl", "-s", &self.socket(node), "stats", "-o", "json"]);
        serde_json::from_str(&out).expect("stats json")
    }

    pub fn drops(&self, node: &str, reason: &str) -> u64 {
        self.stats(node)["datapath"]["drops"]
            .as_array()
            .expect("drops")
            .iter()
            .filter(|d| d["reason"] == reason)
            .map(|d| d["packets"].as_u64().unwrap_or(0))
            .sum()
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = podswitch(&["lab", "down", "--name", &self.name]);
    }
}

/// Waits for `cond` with a deadline.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    cond()
}

/// Namespaces whose name contains `needle`.
pub fn netns_matching(needle: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| n.contains(needle))
                .collect()
        })
        .unwrap_or_default()
}
