#!/usr/bin/env python3
"""Raw packets for tests/hardening.rs, run inside test namespaces only.

Every mode is bounded in count and duration and prints one JSON line.

  spoof IFNAME KIND COUNT OWN_IP OTHER_IP OTHER_MAC DST_IP DPORT
      Writes COUNT frames of one kind with AF_PACKET (gateway MAC from
      the pod's neighbour-free default: ee:ee:ee:ee:ee:ee unless GW_MAC is
      set). KIND: legit, ip (source IP OTHER_IP), mac (source MAC
      OTHER_MAC), arp_ip (ARP request with sender IP OTHER_IP), arp_mac
      (ARP request with sender MAC OTHER_MAC), garp (gratuitous ARP for
      OTHER_IP).
  listen PORT MAX_SECS
      Counts UDP datagrams by payload tag until a datagram "stop" or
      MAX_SECS; prints "ready" first.
  send DST_IP DPORT TAG
      One UDP datagram with payload TAG (an ordinary socket).
  vxlan SRC_IP DST_IP PORT VNI COUNT INNER_SRC_MAC INNER_DST_MAC INNER_SRC_IP INNER_DST_IP DPORT TAG
      COUNT VXLAN datagrams from SRC_IP (bound) carrying a UDP frame.
  flood IFNAME COUNT MAX_SECS DST_IPS DPORTS SPORT_LO
      COUNT UDP frames from the pod's own MAC and IP with distinct
      5-tuples: destination i % len(DST_IPS), destination port cycling
      over DPORTS (a "lo-hi" range), source port from SPORT_LO upwards.
"""

import json
import os
import socket
import struct
import sys
import time

GW_MAC = bytes.fromhex(os.environ.get("GW_MAC", "eeeeeeeeeeee"))
ETH_P_ALL = 3


def mac(s):
    return bytes.fromhex(s.replace(":", ""))


def own_mac(ifname):
    # Not /sys/class/net: a namespace entered with setns keeps the
    # caller's sysfs. The bound AF_PACKET socket names the interface's
    # own hardware address.
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((ifname, 0))
    addr = s.getsockname()[4]
    s.close()
    return addr


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4_udp(src_ip, dst_ip, sport, dport, payload):
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
        socket.inet_aton(src_ip), socket.inet_aton(dst_ip),
    )
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + udp


def eth(dst, src, ethertype, payload):
    return dst + src + struct.pack("!H", ethertype) + payload


def arp(op, sha, spa, tha, tpa):
    return struct.pack(
        "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op,
        sha, socket.inet_aton(spa), tha, socket.inet_aton(tpa),
    )


def spoof(ifname, kind, count, own_ip, other_ip, other_mac, dst_ip, dport):
    me = own_mac(ifname)
    other = mac(other_mac)
    tag = f"spoof-{kind}".encode()
    bcast = b"\xff" * 6
    if kind == "legit":
        f = eth(GW_MAC, me, 0x0800, ipv4_udp(own_ip, dst_ip, 40000, dport, tag))
    elif kind == "ip":
        f = eth(GW_MAC, me, 0x0800, ipv4_udp(other_ip, dst_ip, 40000, dport, tag))
    elif kind == "mac":
        f = eth(GW_MAC, other, 0x0800, ipv4_udp(own_ip, dst_ip, 40000, dport, tag))
    elif kind == "arp_ip":
        f = eth(bcast, me, 0x0806, arp(1, me, other_ip, b"\0" * 6, dst_ip))
    elif kind == "arp_mac":
        f = eth(bcast, me, 0x0806, arp(1, other, own_ip, b"\0" * 6, dst_ip))
    elif kind == "garp":
        f = eth(bcast, me, 0x0806, arp(1, me, other_ip, b"\0" * 6, other_ip))
    else:
        raise SystemExit(f"unknown kind {kind}")
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((ifname, 0))
    for _ in range(count):
        s.send(f)
    print(json.dumps({"kind": kind, "sent": count}))


def listen(port, max_secs):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    print("ready", flush=True)
    deadline = time.monotonic() + max_secs
    tags = {}
    stopped = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data, _ = s.recvfrom(2048)
        except socket.timeout:
            break
        tag = data.decode(errors="replace")
        if tag == "stop":
            stopped = True
            break
        tags[tag] = tags.get(tag, 0) + 1
    print(json.dumps({"stopped": stopped, "tags": tags}), flush=True)


def send(dst_ip, dport, tag):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(tag.encode(), (dst_ip, dport))
    print(json.dumps({"sent": 1}))


def vxlan(src_ip, dst_ip, port, vni, count, isrc_mac, idst_mac, isrc_ip, idst_ip, dport, tag):
    inner = eth(mac(idst_mac), mac(isrc_mac), 0x0800,
                ipv4_udp(isrc_ip, idst_ip, 40000, dport, tag.encode()))
    # RFC 7348 §5: flags with the I bit, 24-bit VNI.
    d = struct.pack("!B3sI", 0x08, b"\0\0\0", vni << 8) + inner
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src_ip, 0))
    for _ in range(count):
        s.sendto(d, (dst_ip, port))
    print(json.dumps({"sent": count, "from": src_ip}))


def flood(ifname, count, max_secs, dst_ips, dports, sport_lo):
    me = own_mac(ifname)
    own_ip = os.environ["OWN_IP"]
    dsts = dst_ips.split(",")
    lo, hi = (int(x) for x in dports.split("-"))
    nports = hi - lo + 1
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((ifname, 0))
    # One template per destination; only the ports change per frame (UDP
    # checksum 0: none, RFC 768), so the IP header checksum stays valid.
    templates = [bytearray(eth(GW_MAC, me, 0x0800, ipv4_udp(own_ip, d, 0, 0, b"flood")))
                 for d in dsts]
    off = 14 + 20
    start = time.monotonic()
    deadline = start + max_secs
    sent = 0
    nd = len(dsts)
    span = nd * nports
    blocked = 0
    while sent < count:
        if sent % 4096 == 0 and time.monotonic() > deadline:
            break
        i = sent
        f = templates[i % nd]
        dport = lo + (i // nd) % nports
        sport = sport_lo + i // span
        if sport > 65535:
            break
        struct.pack_into("!HH", f, off, sport, dport)
        try:
            s.send(f)
        except BlockingIOError:
            blocked += 1
            time.sleep(0.0005)
            continue
        except OSError as e:
            if e.errno == 105:  # ENOBUFS: the tap's queue is full; retry
                blocked += 1
                time.sleep(0.0005)
                continue
            raise
        sent += 1
    secs = time.monotonic() - start
    print(json.dumps({"sent": sent, "secs": round(secs, 3),
                      "pps": round(sent / secs) if secs else 0, "retries": blocked}))


def main():
    a = sys.argv[1:]
    mode = a[0]
    if mode == "spoof":
        spoof(a[1], a[2], int(a[3]), a[4], a[5], a[6], a[7], int(a[8]))
    elif mode == "listen":
        listen(int(a[1]), float(a[2]))
    elif mode == "send":
        send(a[1], int(a[2]), a[3])
    elif mode == "vxlan":
        vxlan(a[1], a[2], int(a[3]), int(a[4]), int(a[5]), a[6], a[7], a[8], a[9],
              int(a[10]), a[11])
    elif mode == "flood":
        flood(a[1], int(a[2]), float(a[3]), a[4], a[5], int(a[6]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
