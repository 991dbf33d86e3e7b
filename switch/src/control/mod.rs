//! The control API: a versioned JSON protocol over a Unix socket (mode
//! 0600, root only) through which the lab, the agent and `podswitch ctl`
//! add and remove pod ports, replace or patch the topology, and read state
//! and counters.
//!
//! Wire format: one JSON object per line in each direction.
//!
//! ```text
//! -> {"v":1,"op":"add_port","args":{"pod":{"name":"default/web-0","netns":"/run/netns/x","ipv4":"10.244.1.5"}}}
//! <- {"ok":true,"result":{...}}
//! <- {"ok":false,"error":{"code":"invalid_argument","field":"pod.ipv4","message":"..."}}
//! ```
//!
//! A request is validated whole before anything changes: an invalid one
//! changes nothing.
/// The API's types live in their own crate (`podswitch-api`), which
/// depends on nothing of the datapath; these paths stay for the switch's
/// own code.
pub mod api {
    pub use podswitch_api::*;
}
pub use podswitch_api::client;
pub mod server;
