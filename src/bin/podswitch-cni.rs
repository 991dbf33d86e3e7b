//! `podswitch-cni`: the CNI plugin binary a container runtime runs (installed
//! into /opt/cni/bin by configs/cni/install.sh). All logic lives in
//! `podswitch_cni` (cni/), which links nothing of kube, tokio or the
//! datapath.

fn main() {
    std::process::exit(podswitch_cni::main());
}
