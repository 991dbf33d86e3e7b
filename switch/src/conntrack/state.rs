//! Per-flow protocol state: the TCP state machine, UDP and ICMP echo, and
//! the timeouts that go with each state.
//!
//! The TCP machine follows the shape of Linux's `nf_conntrack_proto_tcp`
//! (without sequence-window tracking): it only needs to know when a
//! connection is being opened, is established, is closing or is gone, to
//! pick the timeout that keeps its NAT mapping alive for exactly as long
//! as the endpoints may still send.

pub use podswitch_api::flow::{FlowState, Timeouts};
use serde::{Deserialize, Serialize};

/// Direction of a packet relative to its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    /// From the originator (the client).
    Orig = 0,
    /// From the responder.
    Reply = 1,
}

/// TCP flag bits (byte 13 of the header): the wire view's.
pub use crate::wire::tcp::flags as tcp_flags;

/// Flow flags (a `u8` in the table).
pub mod flow_flags {
    /// The originator sent the first FIN.
    pub const FIN_ORIG: u8 = 0x01;
    /// The responder sent the first FIN.
    pub const FIN_REPLY: u8 = 0x02;
    /// The flow's destination was translated (a Service).
    pub const DNAT: u8 = 0x04;
    /// The flow's source was translated (masquerade, hairpin, NodePort).
    pub const SNAT: u8 = 0x08;
    /// Only the original direction is indexed (affinity records).
    pub const ORIG_ONLY: u8 = 0x10;
}

/// The TCP transition for a segment with `flags` in direction `dir`, given
/// the current state and flow flags. Returns the new state and flags.
#[inline]
pub fn tcp_next(state: FlowState, fl: u8, dir: Dir, flags: u8) -> (FlowState, u8) {
    use tcp_flags::*;
    use FlowState::*;
    if flags & RST != 0 {
        return (Close, fl);
    }
    let syn = flags & SYN != 0;
    let ack = flags & ACK != 0;
    let fin = flags & FIN != 0;
    let fin_bit = match dir {
        Dir::Orig => flow_flags::FIN_ORIG,
        Dir::Reply => flow_flags::FIN_REPLY,
    };
    match (state, dir) {
        // A new SYN reopens a closed or timed-wait tuple (port reuse).
        (Close | TimeWait, Dir::Orig) if syn && !ack => (
            SynSent,
            fl & !(flow_flags::FIN_ORIG | flow_flags::FIN_REPLY),
        ),
        (SynSent, Dir::Reply) if syn && ack => (SynRecv, fl),
        (SynSent, Dir::Orig) if syn => (SynSent, fl),
        (SynRecv, Dir::Orig) if ack && !syn => {
            if fin {
                (FinWait, fl | fin_bit)
            } else {
                (Established, fl)
            }
        }
        (Established, _) if fin => (FinWait, fl | fin_bit),
        (FinWait, _) if fin && fl & fin_bit == 0 => (LastAck, fl | fin_bit),
        // The other side acknowledged the first FIN.
        (FinWait, _) if ack && fl & fin_bit == 0 => (CloseWait, fl),
        (CloseWait, _) if fin && fl & fin_bit == 0 => (LastAck, fl | fin_bit),
        // The final ACK comes from the side that closed first.
        (LastAck, _) if ack && !fin && fl & fin_bit != 0 => (TimeWait, fl),
        (s, _) => (s, fl),
    }
}

#[cfg(test)]
mod tests {
    use super::tcp_flags::*;
    use super::*;
    use FlowState::*;

    fn run(steps: &[(Dir, u8)]) -> Vec<FlowState> {
        let (mut s, mut fl) = (SynSent, 0);
        steps
            .iter()
            .map(|&(d, f)| {
                (s, fl) = tcp_next(s, fl, d, f);
                s
            })
            .collect()
    }

    #[test]
    fn handshake_and_orderly_close() {
        use Dir::*;
        let states = run(&[
            (Reply, SYN | ACK),
            (Orig, ACK),
            (Orig, ACK),
            (Orig, FIN | ACK),
            (Reply, ACK),
            (Reply, FIN | ACK),
            (Orig, ACK),
        ]);
        assert_eq!(
            states,
            [
                SynRecv,
                Established,
                Established,
                FinWait,
                CloseWait,
                LastAck,
                TimeWait
            ]
        );
    }

    #[test]
    fn simultaneous_fin_and_server_close() {
        use Dir::*;
        let s = run(&[
            (Reply, SYN | ACK),
            (Orig, ACK),
            (Reply, FIN | ACK),
            (Orig, FIN | ACK),
            (Reply, ACK),
        ]);
        assert_eq!(s, [SynRecv, Established, FinWait, LastAck, TimeWait]);
    }

    #[test]
    fn rst_closes_and_syn_reopens() {
        let (s, fl) = tcp_next(Established, 0, Dir::Reply, RST);
        assert_eq!(s, Close);
        assert_eq!(tcp_next(s, fl, Dir::Orig, SYN).0, SynSent);
        assert_eq!(tcp_next(TimeWait, 3, Dir::Orig, SYN), (SynSent, 0));
        // A stray ACK does not open anything.
        assert_eq!(tcp_next(Close, 0, Dir::Orig, ACK).0, Close);
    }

    #[test]
    fn timeouts_follow_state() {
        let t = Timeouts::default();
        assert_eq!(t.of(6, Established), 86_400);
        assert_eq!(t.of(17, Unreplied), 30);
        assert_eq!(t.of(17, Replied), 120);
        assert_eq!(t.of(1, Unreplied), 30);
        assert_eq!(t.of(6, TimeWait), 120);
    }

    #[test]
    fn state_round_trips_through_u8() {
        for v in 0..=11u8 {
            assert_eq!(FlowState::from_u8(v) as u8, v);
        }
        assert_eq!(FlowState::from_u8(200), Free);
    }
}
