//! `podswitch lab ...`: the standalone lab's kubectl-shaped commands.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use podswitch_lab::cluster::{self, Lab, DEFAULT_LAB};
use podswitch_lab::{manifest, view};

#[derive(clap::Args, Debug)]
pub struct LabArgs {
    /// Lab name (namespaces are prefixed psw-NAME-).
    #[arg(long, global = true, env = "PODSWITCH_LAB")]
    name: Option<String>,
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LabMode {
    Native,
    Vxlan,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum GetOutput {
    Wide,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Resource {
    Pods,
    Pod,
    Po,
    Nodes,
    Node,
    No,
    Services,
    Service,
    Svc,
    #[value(name = "endpointslices")]
    EndpointSlices,
    #[value(name = "endpointslice")]
    EndpointSlice,
}

/// What `lab delete KIND NAME...` deletes.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum DeleteKind {
    Pod,
    Pods,
    Po,
    Deployment,
    Deployments,
    Deploy,
    Service,
    Services,
    Svc,
}

#[derive(Subcommand, Debug)]
enum LabCommand {
    /// Bring a lab up (the embedded default lab, or -f LAB_FILE).
    Up {
        #[arg(short = 'f', long)]
        file: Option<PathBuf>,
        /// Number of nodes (overrides the lab file).
        #[arg(long)]
        nodes: Option<usize>,
        /// How pod traffic crosses nodes (overrides the lab file).
        #[arg(long, value_enum)]
        mode: Option<LabMode>,
        /// VXLAN UDP port (overrides the lab file; 8472 is Linux's and flannel's).
        #[arg(long)]
        vxlan_port: Option<u16>,
        /// VXLAN network identifier (overrides the lab file).
        #[arg(long)]
        vni: Option<u32>,
    },
    /// Tear the lab down: processes, namespaces, state.
    Down,
    /// Create the pods of Kubernetes manifests (Pod, Deployment, Service; multi-document YAML).
    Apply {
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Return once the objects are written, as `kubectl apply` does,
        /// instead of when every node's agent has brought its switch in
        /// step.
        #[arg(long)]
        no_wait: bool,
    },
    /// Delete what the manifests name (-f), or objects by kind and name.
    /// Pods are deleted gracefully: their Service endpoints turn
    /// terminating and they keep running for their grace period
    /// (terminationGracePeriodSeconds, default 2 s in the lab, at most
    /// 30 s); the command returns when they are gone.
    Delete {
        #[arg(
            short = 'f',
            long,
            required_unless_present = "kind",
            conflicts_with = "kind"
        )]
        file: Option<PathBuf>,
        /// pod, deployment or service.
        #[arg(value_enum, requires = "names")]
        kind: Option<DeleteKind>,
        /// Names (`name` or `namespace/name`).
        names: Vec<String>,
        /// Seconds pods get to drain instead of their own grace period
        /// (0: at once).
        #[arg(long, value_name = "SECONDS")]
        grace_period: Option<u32>,
        /// Do not wait for the agents to bring the switches in step.
        #[arg(long)]
        no_wait: bool,
    },
    /// List pods, nodes, services or endpointslices.
    Get {
        #[arg(value_enum)]
        resource: Resource,
        #[arg(short = 'o', long, value_enum)]
        output: Option<GetOutput>,
    },
    /// Run CMD inside POD's network namespace; its exit code is passed through.
    Exec {
        /// The pod (`name` or `namespace/name`).
        #[arg(required_unless_present_any = ["node", "outside"])]
        pod: Option<String>,
        /// Run in a node's namespace instead (where its switch runs).
        #[arg(long, conflicts_with_all = ["pod", "outside"])]
        node: Option<String>,
        /// Run in the outside host's namespace (203.0.113.10).
        #[arg(long, conflicts_with_all = ["pod", "node"])]
        outside: bool,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Restart a node's switch (pods keep their taps; its agent gives it
    /// the nodes and Services again).
    RestartSwitch {
        node: String,
        /// SIGKILL instead of SIGTERM.
        #[arg(long)]
        hard: bool,
        /// Return once the new switch answers, not when its agent has
        /// given it the Services again.
        #[arg(long)]
        no_wait: bool,
    },
    /// Restart a node's agent (its switch keeps forwarding meanwhile; the
    /// new agent makes a full sync).
    RestartAgent {
        node: String,
        /// SIGKILL instead of SIGTERM.
        #[arg(long)]
        hard: bool,
        /// Return once the agent is started, not when it has synced.
        #[arg(long)]
        no_wait: bool,
    },
    /// Bring up the default lab, check connectivity, compare latency and
    /// throughput with the kernel bridge, print a report, tear down.
    Demo {
        /// Shorter measurements (CI).
        #[arg(long)]
        quick: bool,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Worker threads of the switch (0 = one per core).
        #[arg(long, default_value_t = 0)]
        workers: usize,
    },
    /// ClusterIP new-connection rate through podswitch and through
    /// kube-proxy's iptables rules, with the same Services, interleaved.
    BenchServices {
        /// Service counts to compare at (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        services: Vec<usize>,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 2.0)]
        secs: f64,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Run a pod's workload inside its namespace (started by the lab).
    #[command(hide = true)]
    PodRun {
        #[arg(long)]
        pod: String,
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        tcp: Vec<u16>,
        #[arg(long)]
        udp: Vec<u16>,
        #[arg(last = true)]
        cmd: Vec<String>,
    },
}

fn lab_named(name: Option<&str>, file_name: Option<&str>) -> anyhow::Result<Lab> {
    let name = name.or(file_name).unwrap_or("default");
    Lab::new(
        name,
        std::env::current_exe().context("locating the podswitch binary")?,
    )
}

/// A bare object of `kind` named `name` (`namespace/name` or `name` in
/// `default`): all `Lab::delete` needs to find what to delete.
fn named_object(kind: DeleteKind, name: &str) -> anyhow::Result<manifest::Object> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let (namespace, name) = name.split_once('/').unwrap_or(("default", name));
    anyhow::ensure!(
        !namespace.is_empty() && !name.is_empty(),
        "{name:?}: expected NAME or NAMESPACE/NAME"
    );
    let metadata = ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        ..Default::default()
    };
    Ok(match kind {
        DeleteKind::Pod | DeleteKind::Pods | DeleteKind::Po => {
            manifest::Object::Pod(Box::new(k8s_openapi::api::core::v1::Pod {
                metadata,
                ..Default::default()
            }))
        }
        DeleteKind::Deployment | DeleteKind::Deployments | DeleteKind::Deploy => {
            manifest::Object::Deployment(Box::new(k8s_openapi::api::apps::v1::Deployment {
                metadata,
                ..Default::default()
            }))
        }
        DeleteKind::Service | DeleteKind::Services | DeleteKind::Svc => {
            manifest::Object::Service(Box::new(k8s_openapi::api::core::v1::Service {
                metadata,
                ..Default::default()
            }))
        }
    })
}

fn print_restart(what: &str, node: &str, r: &cluster::RestartReport) {
    match r.resynced_in {
        Some(t) => outln!(
            "{what} of {node} restarted (pid {}); switch in step after {:.1} ms",
            r.pid,
            t.as_secs_f64() * 1000.0
        ),
        None => outln!("{what} of {node} restarted (pid {})", r.pid),
    }
}

pub fn run(args: LabArgs) -> anyhow::Result<()> {
    let name = args.name.as_deref();
    match args.command {
        LabCommand::Up {
            file,
            nodes,
            mode,
            vxlan_port,
            vni,
        } => {
            let mut def = match &file {
                Some(f) => cluster::parse_lab(
                    &std::fs::read_to_string(f)
                        .with_context(|| format!("reading {}", f.display()))?,
                    &f.display().to_string(),
                )?,
                None => cluster::parse_lab(DEFAULT_LAB, "embedded default lab")?,
            };
            if let Some(n) = nodes {
                anyhow::ensure!((1..=250).contains(&n), "--nodes must be 1..=250");
                def.lab.spec.nodes = n;
            }
            if let Some(p) = vxlan_port {
                def.lab.spec.vxlan_port = p;
            }
            if let Some(v) = vni {
                anyhow::ensure!(v <= 0x00ff_ffff, "--vni must fit in 24 bits");
                def.lab.spec.vni = v;
            }
            if let Some(m) = mode {
                def.lab.spec.mode = match m {
                    LabMode::Native => podswitch_switch::control::api::ClusterMode::Native,
                    LabMode::Vxlan => podswitch_switch::control::api::ClusterMode::Vxlan,
                };
            }
            let lab = lab_named(name, Some(&def.lab.metadata.name))?;
            let st = lab.up(&def)?;
            outln!(
                "lab {} is up: {} node(s), {} pod(s)",
                st.name,
                st.nodes.len(),
                st.pods.len()
            );
            out!("{}", view::pods_table(&st, false));
        }
        LabCommand::Down => {
            let lab = lab_named(name, None)?;
            let r = lab.down()?;
            outln!(
                "lab {} is down ({} process(es) stopped, {} namespace(s) removed)",
                lab.paths().name,
                r.processes,
                r.namespaces
            );
        }
        LabCommand::Apply { file, no_wait } => {
            let mut lab = lab_named(name, None)?;
            lab.set_wait_for_agents(!no_wait);
            let objects = manifest::load_path(&file)?;
            let r = lab
                .apply(&objects)
                .with_context(|| format!("applying {}", file.display()))?;
            for p in &r.created {
                outln!("pod/{p} created");
            }
            for p in &r.unchanged {
                outln!("pod/{p} unchanged");
            }
            for p in &r.deleted {
                outln!("pod/{p} deleted");
            }
            for o in objects
                .iter()
                .filter(|o| !matches!(o, manifest::Object::Pod(_)))
            {
                outln!("{}/{} configured", o.kind().to_lowercase(), o.name());
            }
        }
        LabCommand::Delete {
            file,
            kind,
            names,
            grace_period,
            no_wait,
        } => {
            let mut lab = lab_named(name, None)?;
            lab.set_wait_for_agents(!no_wait);
            let objects = match (file, kind) {
                (Some(file), _) => manifest::load_path(&file)?,
                (None, Some(kind)) => names
                    .iter()
                    .map(|n| named_object(kind, n))
                    .collect::<anyhow::Result<_>>()?,
                (None, None) => anyhow::bail!("lab delete needs -f FILE or KIND NAME..."),
            };
            for p in lab.delete(&objects, grace_period)? {
                outln!("pod/{p} deleted");
            }
            for o in objects
                .iter()
                .filter(|o| !matches!(o, manifest::Object::Pod(_)))
            {
                outln!("{}/{} deleted", o.kind().to_lowercase(), o.name());
            }
        }
        LabCommand::Get { resource, output } => {
            let lab = lab_named(name, None)?;
            let st = lab
                .state()?
                .with_context(|| format!("lab {} is not up", lab.paths().name))?;
            let wide = output == Some(GetOutput::Wide);
            if output == Some(GetOutput::Json) {
                let list = match resource {
                    Resource::Pods | Resource::Pod | Resource::Po => view::pods_json(&st),
                    Resource::Nodes | Resource::Node | Resource::No => view::nodes_json(&st),
                    Resource::Services | Resource::Service | Resource::Svc => {
                        view::services_json(&st)
                    }
                    Resource::EndpointSlices | Resource::EndpointSlice => {
                        view::endpoint_slices_json(&st)
                    }
                };
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let text = match resource {
                    Resource::Pods | Resource::Pod | Resource::Po => view::pods_table(&st, wide),
                    Resource::Nodes | Resource::Node | Resource::No => view::nodes_table(&st, wide),
                    Resource::Services | Resource::Service | Resource::Svc => {
                        view::services_table(&st, wide)
                    }
                    Resource::EndpointSlices | Resource::EndpointSlice => {
                        view::endpoint_slices_table(&st)
                    }
                };
                out!("{text}");
            }
        }
        LabCommand::Exec {
            pod,
            node,
            outside,
            cmd,
        } => {
            let lab = lab_named(name, None)?;
            let netns = if outside {
                podswitch_switch::port::netns::path(&lab.outside_netns_name())
            } else if let Some(node) = node {
                let st = lab
                    .state()?
                    .with_context(|| format!("lab {} is not up", lab.paths().name))?;
                st.nodes
                    .iter()
                    .find(|n| n.name == node)
                    .map(|n| n.netns.clone())
                    .with_context(|| format!("no node {node:?} in lab {}", st.name))?
            } else {
                lab.find_pod(pod.as_deref().unwrap_or_default())?.netns
            };
            return Err(cluster::exec_in_netns(&netns, &cmd));
        }
        LabCommand::RestartSwitch {
            node,
            hard,
            no_wait,
        } => {
            let mut lab = lab_named(name, None)?;
            lab.set_wait_for_agents(!no_wait);
            let r = lab.restart_switch(&node, hard)?;
            print_restart("switch", &node, &r);
        }
        LabCommand::RestartAgent {
            node,
            hard,
            no_wait,
        } => {
            let mut lab = lab_named(name, None)?;
            lab.set_wait_for_agents(!no_wait);
            let r = lab.restart_agent(&node, hard)?;
            print_restart("agent", &node, &r);
        }
        LabCommand::Demo {
            quick,
            json,
            workers,
        } => {
            let lab = lab_named(name, Some("demo"))?;
            podswitch_lab::demo::run(&lab, quick, json.as_deref(), workers)?;
        }
        LabCommand::BenchServices {
            services,
            rounds,
            secs,
            json,
        } => {
            let lab = lab_named(name, Some("svcbench"))?;
            let report = podswitch_lab::svc_bench::run(&lab, &services, rounds, secs)?;
            outln!("{}", podswitch_lab::svc_bench::render(&report));
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        LabCommand::PodRun {
            pod,
            netns,
            tcp,
            udp,
            cmd,
        } => {
            cluster::enter_netns_for_good(&netns)?;
            if !cmd.is_empty() {
                return Err(cluster::exec_in_netns(&netns, &cmd));
            }
            podswitch_lab::workload::run_echo(&pod, &tcp, &udp)?;
        }
    }
    Ok(())
}
