//! The PROXY protocol (v1 text, v2 binary; HAProxy's), on listeners behind a load balancer.
//!
//! A listener with `proxy_protocol = true` takes connections only from the addresses in
//! `proxy_from`, and each must begin with a PROXY header: the client address in it is the one
//! the gateway uses from then on (logs, last-use records, throttling and admission, what the
//! backend is told). A connection from anywhere else is closed unread: a header is believed only
//! from the load balancer. The header is read exactly, byte for byte, so nothing that follows
//! it (a TLS ClientHello, an IMAP command) is taken away from the protocol; `ppp` parses it.
//! A `LOCAL` header (the balancer's own health check) keeps the balancer's address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The longest v1 header, CRLF included (the specification's bound).
const V1_MAX: usize = 107;

/// The longest v2 address block accepted (addresses and TLVs; HAProxy sends far less).
const V2_MAX_BODY: usize = 1024;

/// Load-balancer addresses a PROXY header is believed from: addresses and CIDR blocks.
#[derive(Debug, Clone, Default)]
pub struct Trusted(Vec<(IpAddr, u8)>);

impl Trusted {
    /// `["10.0.0.5", "192.0.2.0/24", "::1"]`.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut out = Vec::new();
        for entry in entries {
            let (ip, bits) = match entry.split_once('/') {
                Some((ip, bits)) => (ip, Some(bits)),
                None => (entry.as_str(), None),
            };
            let ip: IpAddr = ip
                .trim()
                .parse()
                .map_err(|_| format!("proxy_from: {entry:?} is not an address or CIDR block"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(bits) => bits
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("proxy_from: {entry:?} has a bad prefix length"))?,
                None => max,
            };
            out.push((ip, bits));
        }
        Ok(Self(out))
    }

    /// Whether `ip` is one of the load balancers.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|(net, bits)| match (net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*bits)).unwrap_or(0);
                u32::from(*net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*bits)).unwrap_or(0);
                u128::from(*net) & mask == u128::from(ip) & mask
            }
            _ => false,
        })
    }
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY header in time")]
    Timeout,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
}

/// Reads the header within `deadline`; the client's address, or `None` when the header names
/// none (`LOCAL`, `UNKNOWN`, a unix socket): then the connection's own address stands.
pub async fn read_header(
    tcp: &mut TcpStream,
    deadline: Duration,
) -> Result<Option<SocketAddr>, ProxyError> {
    tokio::time::timeout(deadline, read(tcp))
        .await
        .map_err(|_| ProxyError::Timeout)?
}

async fn read(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyError> {
    let mut head = Vec::with_capacity(64);
    while let Some(n) = more_needed(&head)? {
        let start = head.len();
        head.resize(start + n, 0);
        tcp.read_exact(&mut head[start..]).await?;
    }
    parse(&head)
}

/// The longest header read: a v2 header with the largest address block accepted.
pub const MAX_HEADER: usize = 16 + V2_MAX_BODY;

/// How many more bytes the header that begins with `head` needs before it can be parsed;
/// `None` once it is whole. The framing only (the signature, the v2 length, the v1 CRLF), so
/// the reader takes exactly the header and nothing of what follows it.
pub fn more_needed(head: &[u8]) -> Result<Option<usize>, ProxyError> {
    // Twelve bytes are in every header of either version ("PROXY UNKNOWN\r\n" is 15).
    if head.len() < 12 {
        return Ok(Some(12 - head.len()));
    }
    if head[..12] == *V2_SIGNATURE {
        if head.len() < 16 {
            return Ok(Some(16 - head.len()));
        }
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        if len > V2_MAX_BODY {
            return Err(ProxyError::Malformed(format!(
                "{len}-byte v2 address block"
            )));
        }
        return Ok((head.len() < 16 + len).then(|| 16 + len - head.len()));
    }
    if !head.starts_with(b"PROXY ") {
        return Err(ProxyError::NotProxy);
    }
    if head.ends_with(b"\r\n") {
        return Ok(None);
    }
    if head.len() >= V1_MAX {
        return Err(ProxyError::Malformed(
            "v1 header longer than 107 bytes".into(),
        ));
    }
    Ok(Some(1))
}

/// The client address in a whole header (as [`more_needed`] framed it).
pub fn parse(head: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    if head.starts_with(V2_SIGNATURE) {
        parse_v2(head)
    } else {
        parse_v1(head)
    }
}

fn parse_v1(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    use ppp::v1::{Addresses, Header};
    let header = Header::try_from(bytes).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    Ok(match header.addresses {
        Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        Addresses::Unknown => None,
    })
}

fn parse_v2(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    use ppp::v2::{Addresses, Command, Header};
    let header = Header::try_from(bytes).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    if header.command == Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        Addresses::IPv4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        Addresses::IPv6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        Addresses::Unix(_) | Addresses::Unspecified => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_addresses_and_blocks() {
        let trusted = Trusted::parse(&[
            "127.0.0.1".into(),
            "10.1.0.0/16".into(),
            "2001:db8::/32".into(),
        ])
        .unwrap();
        for ip in ["127.0.0.1", "10.1.200.3", "2001:db8::5", "::ffff:127.0.0.1"] {
            assert!(trusted.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["127.0.0.2", "10.2.0.1", "2001:db9::1", "::1"] {
            assert!(!trusted.contains(ip.parse().unwrap()), "{ip}");
        }
        assert!(Trusted::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(Trusted::parse(&["nonsense".into()]).is_err());
        assert!(!Trusted::default().contains("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn headers_of_both_versions() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 198.51.100.7 192.0.2.1 5555 993\r\n").unwrap(),
            Some("198.51.100.7:5555".parse().unwrap())
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 993\r\n").unwrap(),
            Some("[2001:db8::7]:5555".parse().unwrap())
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n").unwrap(), None);
        assert!(parse_v1(b"PROXY TCP4 nonsense\r\n").is_err());
        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "198.51.100.7:5555".parse::<SocketAddr>().unwrap(),
                "192.0.2.1:993".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        assert_eq!(
            parse_v2(&v2).unwrap(),
            Some("198.51.100.7:5555".parse().unwrap())
        );
    }
}
