//! PROXY protocol v1 (text) and v2 (binary) headers, as haproxy's proxy-protocol.txt
//! specifies them: the original client address a load balancer puts before a connection's
//! first byte. Sans-IO like the frame codec: decoding never allocates, and an incomplete
//! header is `Ok(None)`, not an error.
//!
//! TLVs are checked to tile the rest of the header and otherwise skipped, except
//! PP2_TYPE_CRC32C, which must match the header's checksum. Deciding whether a peer may
//! send a PROXY header at all (only trusted load balancers) is the listener's job.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// How a v1 header starts: "PROXY" and one space.
pub const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// Longest v1 line, CRLF included (the spec's worst case, `PROXY UNKNOWN` with two IPv6 addresses).
pub const V1_MAX_LINE: usize = 107;
/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport and the u16 length.
pub const V2_FIXED_LEN: usize = 16;
/// Longest v2 header accepted, fixed part included. The format allows 16 + 65535; real
/// senders stay far below (a TCP6 header with a few TLVs is about 100 bytes).
pub const V2_MAX_LEN: usize = 4096;

const V2_VERSION: u8 = 0x2;
const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;
const FAM_INET: u8 = 0x1;
const FAM_INET6: u8 = 0x2;
const FAM_UNIX: u8 = 0x3;
const PROTO_UNSPEC: u8 = 0x0;
const PROTO_STREAM: u8 = 0x1;
const PROTO_DGRAM: u8 = 0x2;
/// PP2_TYPE_CRC32C: a u32 (big-endian), the CRC-32C of the whole header computed with
/// this value's four bytes set to zero.
const TLV_CRC32C: u8 = 0x03;

/// What a PROXY header says about the connection. Both addresses are `None` when the
/// header carries none we can use (v1 `UNKNOWN`, v2 `LOCAL`, an unspecified family or
/// transport, AF_UNIX or UDP): the caller then keeps the socket's own addresses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ProxyHeader {
    /// The original client.
    pub source: Option<SocketAddr>,
    /// The address the client connected to (the load balancer's listener).
    pub destination: Option<SocketAddr>,
}

impl ProxyHeader {
    const NO_ADDRESSES: ProxyHeader = ProxyHeader { source: None, destination: None };
}

/// Why bytes are not an acceptable PROXY header. The connection is closed on any of them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProxyError {
    /// The first bytes match neither signature: the peer does not speak the PROXY
    /// protocol (typically a client talking straight to a listener that expects one).
    NotProxy,
    /// A signature, then bytes that do not follow the format.
    Malformed,
    /// A v1 line without CRLF in its first 107 bytes, or a v2 header over [`V2_MAX_LEN`].
    TooLong,
    /// A v2 version, command, family or transport the spec does not define.
    Unsupported,
    /// A v2 CRC32C TLV that does not match the header: corrupted on the way.
    BadChecksum,
}

impl ProxyError {
    /// Text for logs.
    pub fn detail(self) -> &'static str {
        match self {
            ProxyError::NotProxy => "no PROXY protocol header (is the load balancer sending one?)",
            ProxyError::Malformed => "malformed PROXY protocol header",
            ProxyError::TooLong => "PROXY protocol header too long",
            ProxyError::Unsupported => "unsupported PROXY protocol v2 version, command or family",
            ProxyError::BadChecksum => "PROXY protocol v2 header fails its CRC32C check",
        }
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.detail())
    }
}

impl std::error::Error for ProxyError {}

/// Parses the PROXY header at the front of `buf`.
///
/// Returns the header and the bytes it used (the client's own bytes start right after),
/// `Ok(None)` when more bytes are needed, or an error as soon as the bytes seen rule a valid
/// header out: a first byte that starts neither signature is `NotProxy` at once, a v2
/// length over the cap is `TooLong` before the body arrives.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    match buf.first() {
        None => Ok(None),
        Some(&b) if b == V1_PREFIX[0] => parse_v1(buf),
        Some(&b) if b == V2_SIGNATURE[0] => parse_v2(buf),
        Some(_) => Err(ProxyError::NotProxy),
    }
}

/// Whether `buf` is `sig`, the start of `sig`, or starts with `sig`.
fn matches_signature(buf: &[u8], sig: &[u8]) -> bool {
    let n = buf.len().min(sig.len());
    buf[..n] == sig[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if !matches_signature(buf, V1_PREFIX) {
        return Err(ProxyError::NotProxy);
    }
    let window = &buf[..buf.len().min(V1_MAX_LINE)];
    let mut cr = None;
    for (i, &b) in window.iter().enumerate() {
        match b {
            0x20..=0x7e => {}
            b'\r' => {
                match window.get(i + 1) {
                    Some(b'\n') => cr = Some(i),
                    Some(_) => return Err(ProxyError::Malformed),
                    None => {} // LF not seen yet, or it would be past the limit
                }
                break;
            }
            _ => return Err(ProxyError::Malformed), // control bytes, non-ASCII, a bare LF
        }
    }
    let Some(cr) = cr else {
        return if buf.len() >= V1_MAX_LINE { Err(ProxyError::TooLong) } else { Ok(None) };
    };
    let line = std::str::from_utf8(&window[V1_PREFIX.len()..cr]).map_err(|_| ProxyError::Malformed)?;
    let mut fields = line.split(' ');
    let family = fields.next();
    if family == Some("UNKNOWN") {
        // The spec has the receiver ignore whatever follows UNKNOWN on the line.
        return Ok(Some((ProxyHeader::NO_ADDRESSES, cr + 2)));
    }
    let (Some(src), Some(dst), Some(sport), Some(dport), None) =
        (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(ProxyError::Malformed);
    };
    let (src, dst) = match family {
        Some("TCP4") => (IpAddr::V4(v1_addr(src)?), IpAddr::V4(v1_addr(dst)?)),
        Some("TCP6") => (IpAddr::V6(v1_addr(src)?), IpAddr::V6(v1_addr(dst)?)),
        _ => return Err(ProxyError::Malformed),
    };
    let header = ProxyHeader {
        source: Some(SocketAddr::new(src, v1_port(sport)?)),
        destination: Some(SocketAddr::new(dst, v1_port(dport)?)),
    };
    Ok(Some((header, cr + 2)))
}

/// An address of the line's family. std's parsers already refuse what the spec refuses:
/// leading zeros in IPv4, zone ids and brackets in IPv6.
fn v1_addr<A: std::str::FromStr>(s: &str) -> Result<A, ProxyError> {
    s.parse().map_err(|_| ProxyError::Malformed)
}

/// A decimal port, 0..=65535, without leading zeros.
fn v1_port(s: &str) -> Result<u16, ProxyError> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 5 || (b.len() > 1 && b[0] == b'0') || !b.iter().all(u8::is_ascii_digit) {
        return Err(ProxyError::Malformed);
    }
    let v = b.iter().fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
    u16::try_from(v).map_err(|_| ProxyError::Malformed)
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if !matches_signature(buf, V2_SIGNATURE) {
        return Err(ProxyError::NotProxy);
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != V2_VERSION {
        return Err(ProxyError::Unsupported);
    }
    let local = match ver_cmd & 0x0f {
        CMD_LOCAL => true,
        CMD_PROXY => false,
        _ => return Err(ProxyError::Unsupported),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(None);
    };
    let (family, transport) = (fam >> 4, fam & 0x0f);
    // LOCAL discards "the protocol block including the family", so only PROXY checks it.
    if !local && (family > FAM_UNIX || transport > PROTO_DGRAM) {
        return Err(ProxyError::Unsupported);
    }
    let Some(&[hi, lo]) = buf.get(14..16) else {
        return Ok(None);
    };
    let total = V2_FIXED_LEN + usize::from(u16::from_be_bytes([hi, lo]));
    if total > V2_MAX_LEN {
        return Err(ProxyError::TooLong);
    }
    // Where the addresses end is known only for a defined family and transport; with
    // UNSPEC in either, the whole block is skipped unread, as the spec allows.
    let addr_len = match (local, family, transport) {
        (true, _, _) | (_, _, PROTO_UNSPEC) => 0,
        (false, FAM_INET, _) => 12,
        (false, FAM_INET6, _) => 36,
        (false, FAM_UNIX, _) => 216,
        _ => 0,
    };
    if total - V2_FIXED_LEN < addr_len {
        return Err(ProxyError::Malformed);
    }
    let Some(block) = buf.get(V2_FIXED_LEN..total) else {
        return Ok(None);
    };
    if addr_len > 0 {
        check_tlvs(&buf[..total], V2_FIXED_LEN + addr_len)?;
    }
    let header = match (local, family, transport) {
        (false, FAM_INET, PROTO_STREAM) => {
            let (src, dst) = (Ipv4Addr::from(array::<4>(block, 0)?), Ipv4Addr::from(array::<4>(block, 4)?));
            v2_addresses(IpAddr::V4(src), IpAddr::V4(dst), block, 8)?
        }
        (false, FAM_INET6, PROTO_STREAM) => {
            let (src, dst) =
                (Ipv6Addr::from(array::<16>(block, 0)?), Ipv6Addr::from(array::<16>(block, 16)?));
            v2_addresses(IpAddr::V6(src), IpAddr::V6(dst), block, 32)?
        }
        _ => ProxyHeader::NO_ADDRESSES,
    };
    Ok(Some((header, total)))
}

fn v2_addresses(src: IpAddr, dst: IpAddr, block: &[u8], ports_at: usize) -> Result<ProxyHeader, ProxyError> {
    let sport = u16::from_be_bytes(array::<2>(block, ports_at)?);
    let dport = u16::from_be_bytes(array::<2>(block, ports_at + 2)?);
    Ok(ProxyHeader {
        source: Some(SocketAddr::new(src, sport)),
        destination: Some(SocketAddr::new(dst, dport)),
    })
}

fn array<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], ProxyError> {
    b.get(at..at + N).and_then(|s| s.try_into().ok()).ok_or(ProxyError::Malformed)
}

/// TLVs (`type:u8 | length:u16 | value`) must exactly fill `header[from..]`, what
/// follows the addresses. At most one CRC32C TLV, of 4 bytes, which must match.
fn check_tlvs(header: &[u8], from: usize) -> Result<(), ProxyError> {
    let mut at = from;
    let mut crc_at = None;
    while at < header.len() {
        // One or two bytes left: too short for a TLV.
        let Some(&[kind, hi, lo]) = header.get(at..at + 3) else {
            return Err(ProxyError::Malformed);
        };
        let value = at + 3;
        at = value + usize::from(u16::from_be_bytes([hi, lo]));
        if at > header.len() {
            return Err(ProxyError::Malformed);
        }
        if kind == TLV_CRC32C {
            if at - value != 4 || crc_at.is_some() {
                return Err(ProxyError::Malformed);
            }
            crc_at = Some(value);
        }
    }
    if let Some(v) = crc_at {
        let sent = u32::from_be_bytes(array::<4>(header, v)?);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header[..v]), &[0; 4]);
        if crc32c::crc32c_append(crc, &header[v + 4..]) != sent {
            return Err(ProxyError::BadChecksum);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;
    use std::net::{SocketAddrV4, SocketAddrV6};

    fn sa(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("test address"))
    }

    fn ok(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf) {
            Ok(Some(r)) => r,
            other => panic!("{:?}: expected a header, got {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    /// A v2 header with the given command/version, family/transport, address block and TLVs.
    fn v2(ver_cmd: u8, fam: u8, addrs: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(ver_cmd);
        b.push(fam);
        b.extend_from_slice(&((addrs.len() + tlvs.len()) as u16).to_be_bytes());
        b.extend_from_slice(addrs);
        b.extend_from_slice(tlvs);
        b
    }

    fn v4_block(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&src);
        b.extend_from_slice(&dst);
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b
    }

    fn v6_block(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&src.octets());
        b.extend_from_slice(&dst.octets());
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b
    }

    fn tlv(t: u8, value: &[u8]) -> Vec<u8> {
        let mut b = vec![t];
        b.extend_from_slice(&(value.len() as u16).to_be_bytes());
        b.extend_from_slice(value);
        b
    }

    /// Every strict prefix of a valid header asks for more bytes.
    fn assert_truncations_incomplete(h: &[u8]) {
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]), Ok(None), "prefix of {n} bytes of {h:?}");
        }
    }

    fn valid_headers() -> Vec<Vec<u8>> {
        let ssl = [&[0x01u8, 0, 0, 0, 0][..], &tlv(0x21, b"TLSv1.3")].concat();
        vec![
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n".to_vec(),
            b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 0 443\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
                .to_vec(),
            v2(0x21, 0x11, &v4_block([10, 0, 0, 1], [10, 0, 0, 2], 40000, 7700), &[]),
            v2(0x21, 0x11, &v4_block([10, 0, 0, 1], [10, 0, 0, 2], 40000, 7700), &tlv(0x04, &[0; 5])),
            v2(
                0x21,
                0x21,
                &v6_block(Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED, 1, 2),
                &[tlv(0x01, b"h2"), tlv(0x20, &ssl), tlv(0xea, b"\x01vpce-0123")].concat(),
            ),
            v2(0x20, 0x00, &[], &[]),
            v2(0x20, 0x11, &v4_block([1, 1, 1, 1], [2, 2, 2, 2], 3, 4), &[]),
            v2(0x21, 0x31, &[0; 216], &[]),
        ]
    }

    #[test]
    fn v1_tcp4() {
        let h = b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\nHELLO";
        let (hdr, n) = ok(h);
        assert_eq!(n, h.len() - 5);
        assert_eq!(hdr.source, sa("1.2.3.4:1111"));
        assert_eq!(hdr.destination, sa("5.6.7.8:2222"));
    }

    #[test]
    fn v1_tcp6() {
        let h = b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n";
        let (hdr, n) = ok(h);
        assert_eq!(n, h.len());
        assert_eq!(hdr.source, sa("[2001:db8::1]:65535"));
        assert_eq!(hdr.destination, sa("[::1]:0"));
    }

    #[test]
    fn v1_unknown_ignores_the_rest_of_the_line() {
        for h in [&b"PROXY UNKNOWN\r\n"[..], b"PROXY UNKNOWN 1.2.3.4 whatever 99999\r\n"] {
            assert_eq!(ok(h), (ProxyHeader::NO_ADDRESSES, h.len()));
        }
    }

    #[test]
    fn v1_longest_line_is_accepted_and_one_more_byte_is_too_long() {
        let ff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let h = format!("PROXY UNKNOWN {ff} {ff} 65535 65535\r\n");
        assert_eq!(h.len(), V1_MAX_LINE);
        assert_eq!(ok(h.as_bytes()).1, V1_MAX_LINE);
        let long = format!("PROXY UNKNOWN {ff} {ff} 65535 655350\r\n");
        assert_eq!(parse(long.as_bytes()), Err(ProxyError::TooLong));
        // Decided at 107 bytes, without waiting for the rest.
        assert_eq!(parse(&long.as_bytes()[..V1_MAX_LINE]), Err(ProxyError::TooLong));
        assert_eq!(parse(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'A'].repeat(20)), Err(ProxyError::TooLong));
    }

    #[test]
    fn v1_bad_ports_and_addresses() {
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2222\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01111 2222\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 00 2222\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2222\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2222\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 \r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 99999999999\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1111\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222 3333\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1111 2222\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222 \r\n",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1111 2222\r\n",
            b"PROXY TCP4 1.2.3.256 5.6.7.8 1111 2222\r\n",
            b"PROXY TCP4 1.2.3 5.6.7.8 1111 2222\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1111 2222\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1111 2222\r\n",
            b"PROXY TCP6 [::1] ::1 1111 2222\r\n",
            b"PROXY TCP6 fe80::1%eth0 ::1 1111 2222\r\n",
            b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1111 2222\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1111 2222\r\n",
            b"PROXY tcp4 1.2.3.4 5.6.7.8 1111 2222\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY \r\n",
            b"PROXY  TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n",
        ];
        for h in bad {
            assert_eq!(parse(h), Err(ProxyError::Malformed), "{:?}", String::from_utf8_lossy(h));
        }
    }

    #[test]
    fn v1_line_must_end_in_crlf_and_be_plain_ascii() {
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\rX",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\r\n",
            b"PROXY TCP4 1.2.3.4\t5.6.7.8 1111 2222\r\n",
            b"PROXY UNKNOWN \xff\r\n",
            b"PROXY UNKNOWN \0",
        ];
        for h in bad {
            assert_eq!(parse(h), Err(ProxyError::Malformed), "{:?}", String::from_utf8_lossy(h));
        }
    }

    #[test]
    fn v2_proxy_tcp4() {
        let mut h = v2(0x21, 0x11, &v4_block([192, 0, 2, 7], [198, 51, 100, 1], 50123, 7700), &[]);
        assert_eq!(h.len(), 28);
        h.extend_from_slice(b"\x01\x25"); // the client's first bytes stay unread
        let (hdr, n) = ok(&h);
        assert_eq!(n, 28);
        assert_eq!(hdr.source, sa("192.0.2.7:50123"));
        assert_eq!(hdr.destination, sa("198.51.100.1:7700"));
    }

    #[test]
    fn v2_proxy_tcp6_with_tlvs() {
        let src: Ipv6Addr = "2001:db8::17".parse().expect("v6");
        let dst: Ipv6Addr = "2001:db8::1".parse().expect("v6");
        let tlvs = [tlv(0x02, b"push.example.com"), tlv(0x04, &[]), tlv(0xe0, &[7; 300])].concat();
        let h = v2(0x21, 0x21, &v6_block(src, dst, 1, 65535), &tlvs);
        let (hdr, n) = ok(&h);
        assert_eq!(n, 16 + 36 + tlvs.len());
        assert_eq!(hdr.source, Some(SocketAddr::new(IpAddr::V6(src), 1)));
        assert_eq!(hdr.destination, Some(SocketAddr::new(IpAddr::V6(dst), 65535)));
    }

    /// A TCP4 header with a CRC32C TLV (between two others) set to its correct value.
    fn with_crc() -> (Vec<u8>, usize) {
        let tlvs = [tlv(0x01, b"h2"), tlv(TLV_CRC32C, &[0; 4]), tlv(0x05, b"id")].concat();
        let mut h = v2(0x21, 0x11, &v4_block([192, 0, 2, 7], [198, 51, 100, 1], 50123, 7700), &tlvs);
        let at = 16 + 12 + 5 + 3;
        let crc = crc32c::crc32c(&h);
        h[at..at + 4].copy_from_slice(&crc.to_be_bytes());
        (h, at)
    }

    #[test]
    fn v2_crc32c_tlv_is_checked() {
        // The Castagnoli polynomial, as the spec requires (its standard check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let (h, at) = with_crc();
        let (hdr, n) = ok(&h);
        assert_eq!((hdr.source, n), (sa("192.0.2.7:50123"), h.len()));
        for i in [0, 17, 27, 31, at, at + 3, h.len() - 1] {
            let mut bad = h.clone();
            bad[i] ^= 0x40;
            let want = if i == 0 { ProxyError::NotProxy } else { ProxyError::BadChecksum };
            assert_eq!(parse(&bad).map(|_| ()), Err(want), "byte {i} flipped");
        }
    }

    #[test]
    fn v2_crc32c_tlv_must_be_four_bytes_and_only_one() {
        let block = v4_block([1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
        let three = v2(0x21, 0x11, &block, &tlv(TLV_CRC32C, &[0; 3]));
        assert_eq!(parse(&three), Err(ProxyError::Malformed));
        let (h, at) = with_crc();
        let twice = [&h[..], &tlv(TLV_CRC32C, &h[at..at + 4])].concat();
        let mut twice = twice;
        let len = u16::from_be_bytes([twice[14], twice[15]]) + 7;
        twice[14..16].copy_from_slice(&len.to_be_bytes());
        assert_eq!(parse(&twice), Err(ProxyError::Malformed));
    }

    #[test]
    fn v2_proxy_tcp4_with_tlvs_skips_them() {
        let h = v2(0x21, 0x11, &v4_block([1, 2, 3, 4], [5, 6, 7, 8], 1111, 2222), &tlv(0x05, &[9; 128]));
        let (hdr, n) = ok(&h);
        assert_eq!(n, h.len());
        assert_eq!(hdr.source, sa("1.2.3.4:1111"));
    }

    #[test]
    fn v2_local_ignores_the_block() {
        assert_eq!(ok(&v2(0x20, 0x00, &[], &[])), (ProxyHeader::NO_ADDRESSES, 16));
        // A health check may still carry addresses, even an undefined family: all ignored.
        let h = v2(0x20, 0x11, &v4_block([1, 2, 3, 4], [5, 6, 7, 8], 1, 2), &[0xff]);
        assert_eq!(ok(&h), (ProxyHeader::NO_ADDRESSES, h.len()));
        assert_eq!(ok(&v2(0x20, 0xff, &[1, 2, 3], &[])).0, ProxyHeader::NO_ADDRESSES);
    }

    #[test]
    fn v2_families_without_usable_addresses() {
        for fam in [0x00, 0x01, 0x10, 0x12, 0x22, 0x31, 0x32] {
            let block = vec![0u8; 216];
            let h = v2(0x21, fam, &block, &[]);
            assert_eq!(ok(&h), (ProxyHeader::NO_ADDRESSES, h.len()), "fam {fam:#04x}");
        }
    }

    #[test]
    fn v2_undefined_values_are_unsupported() {
        let block = v4_block([1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
        for (ver_cmd, fam) in
            [(0x11, 0x11), (0x31, 0x11), (0x22, 0x11), (0x2f, 0x11), (0x21, 0x41), (0x21, 0x13)]
        {
            let h = v2(ver_cmd, fam, &block, &[]);
            assert_eq!(parse(&h), Err(ProxyError::Unsupported), "{ver_cmd:#04x} {fam:#04x}");
            // Known from the 13th or 14th byte, before the length.
            assert_eq!(parse(&h[..14]), Err(ProxyError::Unsupported), "{ver_cmd:#04x} {fam:#04x}");
        }
    }

    #[test]
    fn v2_length_overflow() {
        let mut h = v2(0x21, 0x11, &[], &[]);
        h[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&h), Err(ProxyError::TooLong), "refused before the body arrives");
        h[14..16].copy_from_slice(&((V2_MAX_LEN - 16 + 1) as u16).to_be_bytes());
        assert_eq!(parse(&h), Err(ProxyError::TooLong));
        // Exactly at the cap: fine.
        let h =
            v2(0x21, 0x11, &v4_block([1, 1, 1, 1], [2, 2, 2, 2], 3, 4), &tlv(0x04, &[0; V2_MAX_LEN - 31]));
        assert_eq!(h.len(), V2_MAX_LEN);
        assert_eq!(ok(&h).1, V2_MAX_LEN);
    }

    #[test]
    fn v2_length_too_short_for_the_family() {
        let full = v4_block([1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
        let h = v2(0x21, 0x11, &full[..11], &[]);
        assert_eq!(parse(&h[..16]), Err(ProxyError::Malformed), "known from the length alone");
        assert_eq!(parse(&v2(0x21, 0x21, &full, &[])), Err(ProxyError::Malformed));
        assert_eq!(parse(&v2(0x21, 0x31, &[0; 108], &[])), Err(ProxyError::Malformed));
    }

    #[test]
    fn v2_tlvs_must_fill_the_rest_exactly() {
        let a = v4_block([1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
        for tlvs in [&[0x04u8][..], &[0x04, 0x00], &[0x04, 0x00, 0x02, 0xaa], &[0x04, 0x00, 0x00, 0x04, 0x00]]
        {
            assert_eq!(parse(&v2(0x21, 0x11, &a, tlvs)), Err(ProxyError::Malformed), "{tlvs:?}");
        }
    }

    #[test]
    fn every_truncation_of_a_valid_header_is_incomplete() {
        for h in valid_headers() {
            assert!(ok(&h).1 == h.len());
            assert_truncations_incomplete(&h);
        }
    }

    #[test]
    fn not_proxy_is_decided_on_the_first_differing_byte() {
        for buf in
            [&b"\x01\x25\x01"[..], b"G", b"GET / HTTP/1.1\r\n", b"\x16\x03\x01", b"\0", b"PROXX", b"PROXY\t"]
        {
            assert_eq!(parse(buf), Err(ProxyError::NotProxy), "{buf:?}");
        }
        let mut sig = V2_SIGNATURE.to_vec();
        sig[11] = b'\r';
        assert_eq!(parse(&sig), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"\r\n\r\n\r"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"PROXY"), Ok(None));
        assert_eq!(parse(b"\r\n\r\n\0"), Ok(None));
    }

    #[test]
    fn garbage_after_a_signature_is_malformed() {
        for buf in [&b"PROXY \x00\x01\x02"[..], b"PROXY \n", b"PROXY TCP4 \xc3\xa9\r\n", b"PROXY garbage\r\n"]
        {
            assert_eq!(parse(buf), Err(ProxyError::Malformed), "{buf:?}");
        }
    }

    fn v1_line(src: SocketAddr, dst: SocketAddr) -> String {
        let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
        format!("PROXY {fam} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port())
    }

    fn v2_header(src: SocketAddr, dst: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
        match (src, dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                v2(0x21, 0x11, &v4_block(s.ip().octets(), d.ip().octets(), s.port(), d.port()), tlvs)
            }
            (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                v2(0x21, 0x21, &v6_block(*s.ip(), *d.ip(), s.port(), d.port()), tlvs)
            }
            _ => unreachable!("same family"),
        }
    }

    fn addr_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
        prop_oneof![
            (any::<SocketAddrV4>(), any::<SocketAddrV4>()).prop_map(|(a, b)| (a.into(), b.into())),
            (any::<[u8; 16]>(), any::<u16>(), any::<[u8; 16]>(), any::<u16>()).prop_map(|(a, p, b, q)| {
                let v6 = |o: [u8; 16], port| SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(o), port, 0, 0));
                (v6(a, p), v6(b, q))
            }),
        ]
    }

    /// Mostly bytes that start like a header, so the cases get past the signature check.
    fn header_like() -> impl Strategy<Value = Vec<u8>> {
        let v2_start = (prop::sample::select(vec![0x20u8, 0x21, 0x22, 0x11]), any::<u8>(), 0u16..80)
            .prop_flat_map(|(vc, fam, len)| {
                prop::collection::vec(any::<u8>(), 0..100).prop_map(move |tail| {
                    let mut b = V2_SIGNATURE.to_vec();
                    b.extend_from_slice(&[vc, fam]);
                    b.extend_from_slice(&len.to_be_bytes());
                    b.extend_from_slice(&tail);
                    b
                })
            });
        let v1_start = "[ -~\r\n]{0,120}".prop_map(|s| [&V1_PREFIX[..], s.as_bytes()].concat());
        prop_oneof![prop::collection::vec(any::<u8>(), 0..200), v2_start, v1_start]
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_and_consumed_fits(buf in header_like()) {
            if let Ok(Some((hdr, n))) = parse(&buf) {
                prop_assert!(n > 0 && n <= buf.len());
                prop_assert!(n <= V2_MAX_LEN);
                // Self-delimiting: the header alone parses the same, and any shorter prefix is incomplete.
                prop_assert_eq!(parse(&buf[..n]), Ok(Some((hdr, n))));
                prop_assert_eq!(parse(&buf[..n - 1]), Ok(None));
            }
        }

        #[test]
        fn v1_and_v2_round_trip((src, dst) in addr_pair(), tail in prop::collection::vec(any::<u8>(), 0..20)) {
            let want = ProxyHeader { source: Some(src), destination: Some(dst) };
            let line = v1_line(src, dst);
            let bin = v2_header(src, dst, &tlv(0x04, &tail));
            for h in [line.as_bytes(), &bin] {
                let buf = [h, &tail].concat();
                prop_assert_eq!(parse(&buf), Ok(Some((want, h.len()))));
            }
        }
    }
}
