//! The address guard (contract section 10): which IP addresses a webhook may never reach. Pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 or IPv6 network, `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    let shift = bits.saturating_sub(prefix);
    shift >= bits || (a >> shift) == (b >> shift)
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not addr/prefix"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{prefix:?} is not a prefix length up to {max}"))?;
        Ok(Cidr { addr, prefix })
    }
}

/// What the guard lets through.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    /// `TAGCAST_ALLOW_PRIVATE_TARGETS`: everything is allowed.
    pub allow_private: bool,
    /// Networks allowed even though they are in a blocked class.
    pub allow: Vec<Cidr>,
}

impl AddressPolicy {
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow_private
            || !is_blocked(ip)
            || self.allow.iter().any(|net| net.contains(canonical(ip)))
    }
}

/// IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible (`::a.b.c.d`) IPv6 addresses are judged as
/// the IPv4 address they carry, so `::ffff:127.0.0.1` is loopback too.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                // ::/96 holds the deprecated IPv4-compatible form; :: and ::1 are themselves.
                if s[..6].iter().all(|&x| x == 0) && u128::from(v6) > 1 {
                    IpAddr::V4(Ipv4Addr::from(u128::from(v6) as u32))
                } else {
                    ip
                }
            }
        },
        v4 => v4,
    }
}

/// Loopback, private, shared (CGNAT), link-local (cloud metadata included), unspecified,
/// broadcast, multicast, documentation, benchmarking and reserved addresses, in both families.
pub fn is_blocked(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_blocked_v4(v4),
        IpAddr::V6(v6) => is_blocked_v6(v6),
    }
}

fn is_blocked_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()          // 0.0.0.0
        || a == 0                // 0.0.0.0/8 "this network"
        || ip.is_loopback()      // 127.0.0.0/8
        || ip.is_private()       // 10/8, 172.16/12, 192.168/16
        || (a == 100 && (64..128).contains(&b)) // 100.64/10 carrier-grade NAT
        || ip.is_link_local()    // 169.254/16, 169.254.169.254 metadata included
        || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24 IETF protocol assignments
        || ip.is_documentation() // 192.0.2/24, 198.51.100/24, 203.0.113/24
        || (a == 198 && (b & 0xfe) == 18) // 198.18/15 benchmarking
        || ip.is_multicast()     // 224/4
        || a >= 240 // 240/4 reserved, 255.255.255.255 broadcast
}

fn is_blocked_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_unspecified()                 // ::
        || ip.is_loopback()             // ::1
        || (s[0] & 0xfe00) == 0xfc00    // fc00::/7 unique local
        || (s[0] & 0xffc0) == 0xfe80    // fe80::/10 link-local
        || (s[0] & 0xffc0) == 0xfec0    // fec0::/10 deprecated site-local
        || ip.is_multicast()            // ff00::/8
        || (s[0] == 0x2001 && s[1] == 0x0db8) // 2001:db8::/32 documentation
        || (s[0] == 0x3fff && s[1] < 0x1000)  // 3fff::/20 documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b) // 64:ff9b::/96 NAT64 can reach private IPv4
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // 100::/64 discard
        || (s[0] == 0x2002) // 6to4 embeds any IPv4 address
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_blocked_class() {
        let blocked = [
            ("unspecified v4", "0.0.0.0"),
            ("this network", "0.1.2.3"),
            ("loopback", "127.0.0.1"),
            ("loopback range", "127.255.0.9"),
            ("private 10/8", "10.0.0.1"),
            ("private 172.16/12 low", "172.16.0.1"),
            ("private 172.16/12 high", "172.31.255.254"),
            ("private 192.168/16", "192.168.1.1"),
            ("carrier-grade NAT low", "100.64.0.1"),
            ("carrier-grade NAT high", "100.127.255.254"),
            ("link-local", "169.254.1.1"),
            ("cloud metadata", "169.254.169.254"),
            ("IETF assignments", "192.0.0.8"),
            ("documentation 1", "192.0.2.1"),
            ("documentation 2", "198.51.100.1"),
            ("documentation 3", "203.0.113.1"),
            ("benchmarking", "198.19.0.1"),
            ("multicast v4", "224.0.0.1"),
            ("reserved", "240.0.0.1"),
            ("broadcast", "255.255.255.255"),
            ("unspecified v6", "::"),
            ("loopback v6", "::1"),
            ("unique local fc", "fc00::1"),
            ("unique local fd", "fd12:3456::1"),
            ("link-local v6", "fe80::1"),
            ("site-local v6", "fec0::1"),
            ("multicast v6", "ff02::1"),
            ("documentation v6", "2001:db8::1"),
            ("documentation v6 3fff", "3fff::1"),
            ("NAT64 of private", "64:ff9b::a00:1"),
            ("6to4", "2002:7f00:1::"),
            ("mapped loopback", "::ffff:127.0.0.1"),
            ("mapped private", "::ffff:10.0.0.1"),
            ("mapped metadata", "::ffff:169.254.169.254"),
            ("compatible loopback", "::127.0.0.1"),
            ("compatible private", "::192.168.0.1"),
        ];
        for (class, addr) in blocked {
            assert!(is_blocked(ip(addr)), "{class}: {addr} must be blocked");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "198.20.0.1",
        ] {
            assert!(!is_blocked(ip(addr)), "{addr} must pass");
        }
    }

    #[test]
    fn policy_switch_and_allow_list() {
        let strict = AddressPolicy::default();
        assert!(!strict.permits(ip("10.1.2.3")));
        let open = AddressPolicy {
            allow_private: true,
            allow: vec![],
        };
        assert!(open.permits(ip("127.0.0.1")));
        let one_range = AddressPolicy {
            allow_private: false,
            allow: vec!["10.1.0.0/16".parse().unwrap()],
        };
        assert!(one_range.permits(ip("10.1.2.3")));
        assert!(
            one_range.permits(ip("::ffff:10.1.2.3")),
            "the mapped form of an allowed address is allowed"
        );
        assert!(!one_range.permits(ip("10.2.0.1")));
        assert!(!one_range.permits(ip("127.0.0.1")));
        assert!(one_range.permits(ip("8.8.8.8")));
    }

    #[test]
    fn cidr_parsing() {
        assert!("10.0.0.0/8".parse::<Cidr>().is_ok());
        assert!("fd00::/8".parse::<Cidr>().is_ok());
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("1.2.3.4")));
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "fd00::/129",
            "x/8",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
