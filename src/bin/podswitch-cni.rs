//! `podswitch-cni`: the CNI plugin binary a container runtime runs (installed
//! into /opt/cni/bin by configs/cni/install.sh). All logic lives in
//! `podswitch_agent::cni`.

fn main() {
    std::process::exit(podswitch_agent::cni::main());
}
