"""Network accounting (iptables) and shaping (tc HTB) of a node, as in vpsAdmin v2.0 (contract 9), applied as
whole rule sets and serialised by one lock per subsystem. See docs/network.md."""

from vpsadmind.firewall.accounting import Firewall, Traffic, restore_binary
from vpsadmind.firewall.addresses import IPAddress, parse_address
from vpsadmind.firewall.rules import CHAIN, RuleKey
from vpsadmind.firewall.shaper import ShapedIp, Shaper

__all__ = ["CHAIN", "Firewall", "IPAddress", "RuleKey", "ShapedIp", "Shaper", "Traffic", "parse_address",
           "restore_binary"]
