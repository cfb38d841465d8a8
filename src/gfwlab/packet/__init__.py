"""Packets and captures: IP/TCP/UDP parsing and building, pcap and pcapng reading, pcap writing."""

from gfwlab.packet.ip import (
    ACK,
    FIN,
    PROTO_TCP,
    PROTO_UDP,
    PSH,
    RST,
    SYN,
    URG,
    Packet,
    addr_bytes,
    addr_text,
    build_ip,
    build_tcp,
    build_udp,
    checksum,
    parse,
)
from gfwlab.packet.pcap import CaptureReader, PcapWriter, link_header_strip

__all__ = [
    "ACK",
    "FIN",
    "PROTO_TCP",
    "PROTO_UDP",
    "PSH",
    "RST",
    "SYN",
    "URG",
    "CaptureReader",
    "Packet",
    "PcapWriter",
    "addr_bytes",
    "addr_text",
    "build_ip",
    "build_tcp",
    "build_udp",
    "checksum",
    "link_header_strip",
    "parse",
]
