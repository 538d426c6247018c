//! The ip filter: allow or deny clients by source address or credentials.
//!
//! Parameters: `allow=RULE[,RULE...]` and `deny=RULE[,RULE...]`, each
//! repeatable. A client matching an allow rule is admitted; otherwise one
//! matching a deny rule is refused; otherwise it is admitted. Rules: `all`
//! / `any`, `allipv4` / `anyipv4`, `allipv6` / `anyipv6`, `allunix` /
//! `anyunix`, `allvsock` / `anyvsock`, an IPv4 or IPv6 address with an
//! optional `/NN` prefix length, `pid:PID`, `uid:UID`, `gid:GID`,
//! `vsock-cid:CID`, `vsock-port:PORT`.

use std::net::IpAddr;

use nbdkit_core::backend::{Error, Filter, Peer, Result};
use nbdkit_core::errno::Errno;

use super::util::parse_unsigned;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Any,
    AnyV4,
    AnyV6,
    AnyUnix,
    AnyVsock,
    Net(IpAddr, u8),
    Pid(u32),
    Uid(u32),
    Gid(u32),
    VsockCid(u32),
    VsockPort(u32),
}

/// The ip filter.
#[derive(Debug, Default)]
pub struct Ip {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

fn parse_rule(key: &str, word: &str) -> Result<Rule> {
    let bad = || Error::config(format!("don't know how to parse rule: {key}={word}"));
    Ok(match word {
        "all" | "any" => Rule::Any,
        "allipv4" | "anyipv4" => Rule::AnyV4,
        "allipv6" | "anyipv6" => Rule::AnyV6,
        "allunix" | "anyunix" => Rule::AnyUnix,
        "allvsock" | "anyvsock" => Rule::AnyVsock,
        _ => {
            for (prefix, make) in [
                ("pid:", Rule::Pid as fn(u32) -> Rule),
                ("uid:", Rule::Uid),
                ("gid:", Rule::Gid),
                ("vsock-cid:", Rule::VsockCid),
                ("vsock-port:", Rule::VsockPort),
            ] {
                if let Some(n) = word.strip_prefix(prefix) {
                    return Ok(make(parse_unsigned(prefix, n)?));
                }
            }
            let (addr, bits) = match word.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (word, None),
            };
            let ip: IpAddr = addr.parse().map_err(|_| bad())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(b) => match b.parse::<u8>() {
                    Ok(n) if n <= max => n,
                    _ => return Err(bad()),
                },
            };
            Rule::Net(ip, bits)
        }
    })
}

fn prefix_match(a: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (a, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl Rule {
    fn matches(&self, peer: &Peer) -> bool {
        match (self, peer) {
            (Rule::Any, _) => true,
            (Rule::AnyV4, Peer::Inet(a)) => a.ip().to_canonical().is_ipv4(),
            (Rule::AnyV6, Peer::Inet(a)) => a.ip().to_canonical().is_ipv6(),
            (Rule::AnyUnix, Peer::Unix { .. }) => true,
            (Rule::AnyVsock, Peer::Vsock { .. }) => true,
            (Rule::Net(net, bits), Peer::Inet(a)) => {
                prefix_match(a.ip(), *net, *bits)
                    || prefix_match(a.ip().to_canonical(), *net, *bits)
            }
            (Rule::Pid(p), Peer::Unix { pid: Some(x), .. }) => i64::from(*p) == i64::from(*x),
            (Rule::Uid(u), Peer::Unix { uid: Some(x), .. }) => u == x,
            (Rule::Gid(g), Peer::Unix { gid: Some(x), .. }) => g == x,
            (Rule::VsockCid(c), Peer::Vsock { cid, .. }) => c == cid,
            (Rule::VsockPort(p), Peer::Vsock { port, .. }) => p == port,
            _ => false,
        }
    }
}

/// A rule as nbdkit prints it with `-D ip.rules=1` (`ipv4:10.0.0.0/8`).
impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::Any => write!(f, "any"),
            Rule::AnyV4 => write!(f, "anyipv4"),
            Rule::AnyV6 => write!(f, "anyipv6"),
            Rule::AnyUnix => write!(f, "anyunix"),
            Rule::AnyVsock => write!(f, "anyvsock"),
            Rule::Net(IpAddr::V4(a), bits) => write!(f, "ipv4:{a}/{bits}"),
            Rule::Net(IpAddr::V6(a), bits) => write!(f, "ipv6:[{a}]/{bits}"),
            Rule::Pid(n) => write!(f, "pid:{n}"),
            Rule::Uid(n) => write!(f, "uid:{n}"),
            Rule::Gid(n) => write!(f, "gid:{n}"),
            Rule::VsockCid(n) => write!(f, "vsock-cid:{n}"),
            Rule::VsockPort(n) => write!(f, "vsock-port:{n}"),
        }
    }
}

impl Ip {
    fn permitted(&self, peer: &Peer) -> bool {
        // Other kinds of sockets are always allowed, as in nbdkit.
        if matches!(peer, Peer::Unknown) {
            return true;
        }
        let debug = nbdkit_core::debug::enabled("ip", "rules");
        let matches = |list: &[Rule], name: &str| {
            list.iter().any(|r| {
                let m = r.matches(peer);
                if debug {
                    crate::log::debug(
                        None,
                        format_args!(
                            "ip: match source with {name}={r} => {}",
                            if m { "yes" } else { "no" }
                        ),
                    );
                }
                m
            })
        };
        if matches(&self.allow, "allow") {
            return true;
        }
        !matches(&self.deny, "deny")
    }
}

impl Filter for Ip {
    fn name(&self) -> &'static str {
        "ip"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit ip filter")
    }

    fn config_help(&self) -> &'static str {
        "allow=addr[,addr...]     Set allow list.\n\
         deny=addr[,addr...]      Set deny list."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let list = match key {
            "allow" => &mut self.allow,
            "deny" => &mut self.deny,
            _ => return Ok(false),
        };
        for word in value.split(',') {
            list.push(parse_rule(key, word)?);
        }
        Ok(true)
    }

    fn blocks(&self) -> bool {
        false
    }

    fn debug_flags(&self) -> &'static [&'static str] {
        &["rules"]
    }

    fn config_complete(&mut self) -> Result<()> {
        if nbdkit_core::debug::enabled("ip", "rules") {
            for (name, list) in [("allow", &self.allow), ("deny", &self.deny)] {
                for r in list {
                    crate::log::debug(None, format_args!("ip: parsed {name}={r}"));
                }
            }
        }
        Ok(())
    }

    fn preconnect(&self, _readonly: bool, peer: &Peer) -> Result<()> {
        if self.allow.is_empty() && self.deny.is_empty() {
            return Ok(());
        }
        if self.permitted(peer) {
            Ok(())
        } else {
            Err(Error::msg(
                Errno::EPERM,
                "client not permitted to connect because of source address restriction",
            ))
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use std::net::SocketAddr;

    fn ip(allow: &str, deny: &str) -> Ip {
        let mut f = Ip::default();
        if !allow.is_empty() {
            f.config("allow", allow).unwrap();
        }
        if !deny.is_empty() {
            f.config("deny", deny).unwrap();
        }
        f
    }

    fn inet(s: &str) -> Peer {
        Peer::Inet(s.parse::<SocketAddr>().unwrap())
    }

    #[test]
    fn cidr_and_keywords() {
        let f = ip("127.0.0.1", "all");
        assert!(f.permitted(&inet("127.0.0.1:1000")));
        assert!(!f.permitted(&inet("127.0.0.2:1000")));
        let f = ip("", "127.0.0.0/8");
        assert!(!f.permitted(&inet("127.9.9.9:1")));
        assert!(f.permitted(&inet("10.0.0.1:1")));
        assert!(!f.permitted(&inet("[::ffff:127.0.0.1]:1")));
        let f = ip("anyipv6", "all");
        assert!(f.permitted(&inet("[::1]:1")));
        assert!(!f.permitted(&inet("1.2.3.4:1")));
        let f = ip("", "::1/128");
        assert!(!f.permitted(&inet("[::1]:1")));
    }

    #[test]
    fn unix_credentials() {
        let f = ip("uid:1000,gid:5", "all");
        let p = |uid| Peer::Unix {
            pid: Some(1),
            uid: Some(uid),
            gid: Some(7),
        };
        assert!(f.permitted(&p(1000)));
        assert!(!f.permitted(&p(1001)));
        assert!(ip("anyunix", "all").permitted(&p(3)));
    }

    #[test]
    fn bad_rules() {
        let mut f = Ip::default();
        assert_eq!(
            f.config("allow", "foo").unwrap_err().to_string(),
            "don't know how to parse rule: allow=foo"
        );
        assert!(f.config("deny", "10.0.0.0/33").is_err());
        assert!(f.config("deny", "uid:x").is_err());
    }
}
