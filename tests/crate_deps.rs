//! Crates that match the product (#30): the CNI plugin a runtime runs for
//! every pod, and the control API every client links, carry nothing of
//! the Kubernetes client, the async runtime or the datapath. Checked on
//! the dependency tree cargo resolves (`cargo tree`), so a new dependency
//! that drags one in fails here, not in a size report.

use std::process::Command;

/// What must never be in the tree of these crates.
const FORBIDDEN: &[&str] = &[
    "kube",
    "kube-client",
    "k8s-openapi",
    "tokio",
    "rtnetlink",
    "io-uring",
    "podswitch-switch",
    "podswitch-agent",
];

/// The crate names in `package`'s normal and build dependency tree.
fn tree(package: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            package,
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn assert_lean(package: &str) {
    let crates = tree(package);
    assert!(
        crates.iter().any(|c| c == package),
        "cargo tree -p {package} did not list {package} itself: {crates:?}"
    );
    let found: Vec<&String> = crates
        .iter()
        .filter(|c| FORBIDDEN.contains(&c.as_str()))
        .collect();
    assert!(
        found.is_empty(),
        "{package} depends on {found:?}; it must build without kube, tokio or the datapath"
    );
    eprintln!("{package}: {} crates in its tree, none of {FORBIDDEN:?}", {
        let mut u = crates.clone();
        u.sort();
        u.dedup();
        u.len()
    });
}

#[test]
fn the_cni_plugin_links_neither_kube_nor_tokio_nor_the_datapath() {
    assert_lean("podswitch-cni");
}

#[test]
fn the_control_api_links_neither_kube_nor_tokio_nor_the_datapath() {
    assert_lean("podswitch-api");
}

#[test]
fn the_check_would_see_a_forbidden_crate() {
    // The switch links tokio (netlink) and io-uring: the same check on it
    // must find them, or the two tests above prove nothing.
    let crates = tree("podswitch-switch");
    assert!(crates.iter().any(|c| c == "tokio"), "{crates:?}");
    assert!(crates.iter().any(|c| c == "io-uring"), "{crates:?}");
}
