//! `podswitch agent ...`: the node agent that feeds the switch its
//! topology, from the Kubernetes API or from manifest files, and its
//! status.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use std::time::Duration;

use podswitch_agent::source::{
    self, kubernetes, status, FileSourceConfig, KubernetesSourceConfig, PushConfig, StatusFileSink,
    SwitchSink, DEFAULT_STATUS_FILE,
};
use podswitch_switch::control::api::ServiceSettings;

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum StatusOutput {
    Json,
}

#[derive(Subcommand, Debug)]
enum AgentCommand {
    /// Watch the Kubernetes API (in-cluster service account or a
    /// kubeconfig) and keep this node's switch in step.
    Kubernetes {
        #[command(flatten)]
        common: Common,
        /// A kubeconfig (default: $KUBECONFIG, ~/.kube/config, else the
        /// in-cluster service account).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Watch a manifest file or directory (Nodes, Pods with status.podIP,
    /// Services, EndpointSlices) and keep this node's switch in step.
    Files {
        #[command(flatten)]
        common: Common,
        /// The manifest file or directory.
        #[arg(long)]
        dir: PathBuf,
        /// How often the files are checked for changes, in milliseconds.
        #[arg(long, default_value_t = 100)]
        poll_ms: u64,
        /// Enter this network namespace first (the node's; the lab).
        #[arg(long)]
        netns: Option<PathBuf>,
    },
    /// Wait until this node has a pod CIDR and write it to a file (the
    /// DaemonSet's init step: the switch starts with it).
    PodCidr {
        #[arg(long, env = "NODE_NAME")]
        node_name: String,
        #[arg(long)]
        output: PathBuf,
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Show a running agent's status: last push, problems per object.
    Status {
        #[arg(long, default_value = DEFAULT_STATUS_FILE)]
        status_file: PathBuf,
        #[arg(short = 'o', long, value_enum)]
        output: Option<StatusOutput>,
    },
}

#[derive(clap::Args, Debug)]
struct Common {
    /// This node's name (its Node's metadata.name).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The switch's control socket.
    #[arg(long, default_value = "/run/podswitch/switch.sock")]
    switch_socket: PathBuf,
    /// Agent config (TOML: a [services] table with the cluster's service
    /// settings, see configs/kubernetes/configmap.yaml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the agent writes its status (`podswitch agent status`).
    #[arg(long, default_value = DEFAULT_STATUS_FILE)]
    status_file: PathBuf,
    /// A full sync of the switch this often (seconds), whatever happened.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    resync_secs: u64,
    /// The longest wait between retries of a failed push (milliseconds;
    /// they start at 100 ms and double). It bounds how long a restarted
    /// switch waits for its topology.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..))]
    retry_max_ms: u64,
}

impl Common {
    fn push_config(&self) -> PushConfig {
        PushConfig {
            resync_period: Duration::from_secs(self.resync_secs),
            retry_max: Duration::from_millis(self.retry_max_ms),
            ..PushConfig::default()
        }
    }
}

/// The agent's config file.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AgentConfigFile {
    #[serde(default)]
    services: ServiceSettings,
}

fn settings(config: Option<&Path>) -> anyhow::Result<ServiceSettings> {
    let Some(path) = config else {
        return Ok(ServiceSettings::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: AgentConfigFile =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(file.services)
}

fn runtime() -> anyhow::Result<source::Runtime> {
    source::runtime().context("starting the async runtime")
}

/// Runs `fut` until it ends or SIGINT/SIGTERM.
fn run_until_signal<F>(fut: F) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<(), source::SourceError>> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = tx.clone();
    ctrlc::set_handler(move || {
        let _ = stop.send(None);
    })
    .context("installing the signal handler")?;
    let rt = runtime()?;
    rt.spawn(async move {
        let _ = tx.send(Some(fut.await));
    });
    match rx.recv() {
        Ok(Some(result)) => result.context("the agent stopped"),
        _ => {
            tracing::info!("stopping; the switch keeps its topology");
            Ok(())
        }
    }
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    match args.command {
        AgentCommand::Kubernetes { common, kubeconfig } => {
            let settings = settings(common.config.as_deref())?;
            let sink = StatusFileSink::new(
                SwitchSink::new(&common.switch_socket, &common.node_name),
                &common.status_file,
                &common.node_name,
                "kubernetes",
            );
            let mut config = KubernetesSourceConfig::new(common.node_name.clone(), settings);
            config.push = common.push_config();
            run_until_signal(async move {
                let client = kubernetes::kube_client(kubeconfig.as_deref()).await?;
                source::run_kubernetes_source_with_client(client, config, sink).await
            })
        }
        AgentCommand::Files {
            common,
            dir,
            poll_ms,
            netns,
        } => {
            if let Some(ns) = &netns {
                // Before any thread exists.
                podswitch_lab::cluster::enter_netns_for_good(ns)?;
            }
            let settings = settings(common.config.as_deref())?;
            let sink = StatusFileSink::new(
                SwitchSink::new(&common.switch_socket, &common.node_name),
                &common.status_file,
                &common.node_name,
                &format!("files:{}", dir.display()),
            );
            let mut config = FileSourceConfig::new(dir, common.node_name.clone());
            config.settings = settings;
            config.push = common.push_config();
            config.poll_interval = std::time::Duration::from_millis(poll_ms.max(10));
            run_until_signal(source::run_file_source(config, sink))
        }
        AgentCommand::PodCidr {
            node_name,
            output,
            kubeconfig,
        } => {
            let rt = runtime()?;
            let cidr = rt.block_on(async {
                let client = kubernetes::kube_client(kubeconfig.as_deref()).await?;
                anyhow::Ok(kubernetes::wait_for_pod_cidr(client, &node_name).await)
            })?;
            let tmp = output.with_extension("tmp");
            std::fs::write(&tmp, format!("{cidr}\n"))
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &output)
                .with_context(|| format!("renaming to {}", output.display()))?;
            tracing::info!(node = %node_name, %cidr, file = %output.display(), "pod CIDR written");
            Ok(())
        }
        AgentCommand::Status {
            status_file,
            output,
        } => show_status(&status_file, output),
    }
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    let ms = now_ms.saturating_sub(then_ms);
    match ms {
        0..1_000 => format!("{ms} ms ago"),
        1_000..120_000 => format!("{:.1} s ago", ms as f64 / 1000.0),
        _ => format!("{} min ago", ms / 60_000),
    }
}

fn show_status(path: &Path, output: Option<StatusOutput>) -> anyhow::Result<()> {
    let st = status::read_status(path)?;
    if output == Some(StatusOutput::Json) {
        outln!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    let now = status::unix_ms();
    let alive = Path::new(&format!("/proc/{}", st.pid)).exists();
    outln!("node:        {}", st.node);
    outln!("source:      {}", st.source);
    outln!(
        "agent:       pid {}{}, started {}, status written {}",
        st.pid,
        if alive { "" } else { " (not running)" },
        ago(now, st.started_unix_ms),
        ago(now, st.updated_unix_ms)
    );
    let s = &st.source_status;
    let n = |k: &str| s.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    match st.last_push_unix_ms {
        Some(t) => outln!(
            "last push:   {} ({}); {} full syncs, {} patches",
            ago(now, t),
            if st.last_push_full == Some(true) {
                "full sync"
            } else {
                "patch"
            },
            n("full_syncs"),
            n("patches")
        ),
        None => outln!(
            "last push:   none yet{}",
            if s.get("listed").and_then(|v| v.as_bool()) == Some(true) {
                ""
            } else {
                " (still listing)"
            }
        ),
    }
    if n("sink_errors") > 0 {
        outln!(
            "switch:      {} failed pushes, last: {}",
            n("sink_errors"),
            s.get("last_sink_error")
                .and_then(|v| v.as_str())
                .unwrap_or("-")
        );
    }
    if let Some(errors) = s.get("watch_errors").and_then(|v| v.as_object()) {
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            outln!(
                "watch:       errors {}; last: {}",
                list.join(", "),
                s.get("last_watch_error")
                    .and_then(|v| v.as_str())
                    .unwrap_or("-")
            );
        }
    }
    let input = s
        .get("input_problems")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    let problems = s
        .get("problems")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    outln!(
        "problems:    {} input, {} objects",
        input.len(),
        problems.len()
    );
    for p in &input {
        let text = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("");
        match text("at") {
            "" => outln!("  {}: {}", text("file"), text("message")),
            at => outln!("  {}: {at}: {}", text("file"), text("message")),
        }
    }
    for p in &problems {
        let o = &p["object"];
        let object = match o.get("namespace").and_then(|v| v.as_str()) {
            Some(ns) => format!(
                "{} {ns}/{}",
                o["kind"].as_str().unwrap_or(""),
                o["name"].as_str().unwrap_or("")
            ),
            None => format!(
                "{} {}",
                o["kind"].as_str().unwrap_or(""),
                o["name"].as_str().unwrap_or("")
            ),
        };
        let field = p
            .get("field")
            .and_then(|v| v.as_str())
            .map(|f| format!(" {f}"))
            .unwrap_or_default();
        outln!(
            "  {object}{field}: {} [{}]",
            p["reason"].as_str().unwrap_or(""),
            p["outcome"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
