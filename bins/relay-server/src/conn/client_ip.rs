//! The client's address behind trusted reverse proxies.

use std::net::{IpAddr, SocketAddr};

use actix_web::HttpRequest;

use super::is_trusted;

/// The client's address: the peer's, or — when the peer is one of the `trusted` proxies — the
/// right-most `X-Forwarded-For` address that is not itself a trusted proxy. `None` only when
/// the request has no peer address (a test request).
///
/// # Security
/// Only entries appended by trusted proxies are believed: a client can write anything into
/// `X-Forwarded-For`, but each trusted proxy appends the address it saw, so the walk from the
/// right stops at the first hop no trusted proxy vouches for. An entry that is not an address
/// stops the walk at the proxy that passed it on. IPv4-mapped IPv6 addresses come back as IPv4.
pub fn client_ip(req: &HttpRequest, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip().to_canonical();
    let hops: Vec<Option<IpAddr>> = req
        .headers()
        .get_all("x-forwarded-for")
        .flat_map(|value| match value.to_str() {
            Ok(text) => text.split(',').map(parse_hop).collect::<Vec<_>>(),
            Err(_) => vec![None],
        })
        .collect();
    let mut current = peer;
    for hop in hops.iter().rev() {
        if !is_trusted(current, trusted) {
            return Some(current);
        }
        match hop {
            Some(ip) => current = *ip,
            None => return Some(current),
        }
    }
    Some(current)
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `2001:db8::1`, `1.2.3.4:5678` or `[2001:db8::1]:80`.
fn parse_hop(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| text.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use actix_web::test::TestRequest;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn request(peer: &str, forwarded: &[&str]) -> HttpRequest {
        let mut r = TestRequest::default().peer_addr(peer.parse().unwrap());
        for f in forwarded {
            r = r.append_header(("X-Forwarded-For", *f));
        }
        r.to_http_request()
    }

    #[test]
    fn client_ip_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let trusted = [ip("10.0.0.1"), ip("10.0.0.2")];
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(&request("203.0.113.5:4000", &["198.51.100.1"]), &trusted),
            Some(ip("203.0.113.5"))
        );
        // Through one trusted proxy.
        assert_eq!(
            client_ip(&request("10.0.0.1:4000", &["198.51.100.1"]), &trusted),
            Some(ip("198.51.100.1"))
        );
        // A forged left part is ignored: the right-most untrusted hop wins.
        assert_eq!(
            client_ip(
                &request("10.0.0.1:4000", &["1.1.1.1, 198.51.100.1, 10.0.0.2"]),
                &trusted
            ),
            Some(ip("198.51.100.1"))
        );
        // Several headers are one list, in order.
        assert_eq!(
            client_ip(
                &request("10.0.0.1:4000", &["1.1.1.1", "198.51.100.1:555"]),
                &trusted
            ),
            Some(ip("198.51.100.1"))
        );
        // A trusted proxy without the header, or only trusted hops: the left-most proxy.
        assert_eq!(
            client_ip(&request("10.0.0.1:4000", &[]), &trusted),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(
            client_ip(&request("10.0.0.1:4000", &["10.0.0.2"]), &trusted),
            Some(ip("10.0.0.2"))
        );
        // Garbage stops the walk at the proxy that passed it on.
        assert_eq!(
            client_ip(&request("10.0.0.1:4000", &["198.51.100.1, not-an-ip"]), &trusted),
            Some(ip("10.0.0.1"))
        );
        // IPv6, bracketed with a port, and IPv4-mapped.
        assert_eq!(
            client_ip(
                &request("[::ffff:10.0.0.1]:4000", &["[2001:db8::7]:80"]),
                &trusted
            ),
            Some(ip("2001:db8::7"))
        );
        assert_eq!(
            client_ip(&request("[::ffff:203.0.113.5]:4000", &[]), &trusted),
            Some(ip("203.0.113.5"))
        );
        // No peer address.
        assert_eq!(
            client_ip(&TestRequest::default().to_http_request(), &trusted),
            None
        );
    }
}
