//! The one place capability checks happen: which interfaces a plugin gets, which HTTP
//! destinations it may reach, and how operator overrides rewrite them.
//!
//! Deny by default: a plugin gets exactly what its manifest requests, narrowed by the operator's
//! policy; anything else is not linked at all. This module decides; it performs no I/O.
//!
//! The address rule: plugins reach only public addresses. A destination that is an operator
//! override's target (how local fakes are reached) is trusted as the operator wrote it; any other
//! destination whose host is a literal IP address must be public ([`is_public_address`]) here,
//! and one named by a DNS name is resolved by [`super::dns`], which drops the non-public answers.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::Url;

/// One allow-list entry: `scheme://host[:port]`, where host may be `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: HostPattern,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`.
    Suffix(String),
}

/// Why an allow-list entry was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AllowListError {
    /// The entry is not `scheme://host[:port]`.
    #[error(
        "entry {entry:?} {problem}; write it as scheme://host[:port], e.g. \"https://api.example.com\""
    )]
    Entry {
        /// The entry as written.
        entry: String,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Which schemes an entry may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schemes {
    /// `http`, `https`: the `http` capability.
    Http,
    /// `ws`, `wss`: long connections the host dials for a plugin.
    WebSocket,
    /// Either: operator base-URL overrides.
    Any,
}

impl Schemes {
    fn admit(self, scheme: &str) -> Result<(), &'static str> {
        let http = scheme == "http" || scheme == "https";
        let ws = scheme == "ws" || scheme == "wss";
        match self {
            Schemes::Http if http => Ok(()),
            Schemes::Http => Err("is not http or https"),
            Schemes::WebSocket if ws => Ok(()),
            Schemes::WebSocket => Err("is not ws or wss"),
            Schemes::Any if http || ws => Ok(()),
            Schemes::Any => Err("is not http, https, ws or wss"),
        }
    }
}

impl Origin {
    /// Parses an HTTP entry. Bare `*`, paths, queries, credentials and non-HTTP schemes are
    /// refused.
    pub fn parse(entry: &str) -> Result<Origin, AllowListError> {
        Origin::parse_in(entry, Schemes::Http)
    }

    /// Parses a WebSocket entry (`wss://host[:port]`), with the same rules as [`Origin::parse`].
    pub fn parse_websocket(entry: &str) -> Result<Origin, AllowListError> {
        Origin::parse_in(entry, Schemes::WebSocket)
    }

    fn parse_in(entry: &str, schemes: Schemes) -> Result<Origin, AllowListError> {
        let bad = |problem| AllowListError::Entry {
            entry: entry.to_string(),
            problem,
        };
        let (scheme, rest) = entry
            .split_once("://")
            .ok_or_else(|| bad("has no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        schemes.admit(&scheme).map_err(bad)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("has a path, query or credentials"));
        }
        let wildcard = rest.starts_with("*.");
        // Parse through `url` so hosts and ports are normalised exactly as requests will be.
        let probe = format!("{scheme}://{}", if wildcard { &rest[2..] } else { rest });
        let url = Url::parse(&probe).map_err(|_| bad("is not a valid origin"))?;
        let host = url
            .host_str()
            .ok_or_else(|| bad("has no host"))?
            .to_string();
        if host.is_empty() || rest == "*" || host == "*" {
            return Err(bad("allows every host"));
        }
        let port = url
            .port_or_known_default()
            .ok_or_else(|| bad("has no port"))?;
        let host = if wildcard {
            HostPattern::Suffix(host)
        } else {
            HostPattern::Exact(host)
        };
        Ok(Origin { scheme, host, port })
    }

    /// Whether `url` is inside this origin.
    pub fn matches(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        url.scheme() == self.scheme
            && url.port_or_known_default() == Some(self.port)
            && match &self.host {
                HostPattern::Exact(h) => host == h,
                HostPattern::Suffix(s) => {
                    host.len() > s.len() + 1 && host.ends_with(s.as_str()) && {
                        let dot = host.len() - s.len() - 1;
                        host.as_bytes()[dot] == b'.'
                    }
                }
            }
    }

    fn of_url(url: &Url) -> Option<Origin> {
        Some(Origin {
            scheme: url.scheme().to_string(),
            host: HostPattern::Exact(url.host_str()?.to_string()),
            port: url.port_or_known_default()?,
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match &self.host {
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Suffix(s) => format!("*.{s}"),
        };
        let default = if self.scheme == "https" || self.scheme == "wss" {
            443
        } else {
            80
        };
        if self.port == default {
            write!(f, "{}://{host}", self.scheme)
        } else {
            write!(f, "{}://{host}:{}", self.scheme, self.port)
        }
    }
}

/// A plugin's HTTP destinations. Empty = deny all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    origins: Vec<Origin>,
}

impl AllowList {
    /// Parses manifest entries of `capabilities.http`.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowList, AllowListError> {
        AllowList::parse_in(entries, Schemes::Http)
    }

    /// Parses manifest entries of `capabilities.websocket`.
    pub fn parse_websocket<S: AsRef<str>>(entries: &[S]) -> Result<AllowList, AllowListError> {
        AllowList::parse_in(entries, Schemes::WebSocket)
    }

    fn parse_in<S: AsRef<str>>(
        entries: &[S],
        schemes: Schemes,
    ) -> Result<AllowList, AllowListError> {
        let origins = entries
            .iter()
            .map(|e| Origin::parse_in(e.as_ref(), schemes))
            .collect::<Result<_, _>>()?;
        Ok(AllowList { origins })
    }

    /// Whether a URL may be requested.
    pub fn allows(&self, url: &Url) -> bool {
        self.origins.iter().any(|o| o.matches(url))
    }

    /// The entries, for `plugins inspect`.
    pub fn entries(&self) -> impl Iterator<Item = &Origin> {
        self.origins.iter()
    }
}

/// An operator rule that sends requests for one origin somewhere else (e.g. a local fake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrlOverride {
    from: Origin,
    to: Url,
}

impl BaseUrlOverride {
    /// `from` is an origin the plugin uses (`https://api.example.com`, or a WebSocket origin such
    /// as `wss://ws.example.com`); `to` is where requests go instead
    /// (`http://127.0.0.1:9300`).
    pub fn new(from: &str, to: &str) -> Result<BaseUrlOverride, AllowListError> {
        let from = Origin::parse_in(from, Schemes::Any)?;
        let to_origin = Origin::parse_in(to.trim_end_matches('/'), Schemes::Any)?;
        if matches!(from.host, HostPattern::Suffix(_))
            || matches!(to_origin.host, HostPattern::Suffix(_))
        {
            return Err(AllowListError::Entry {
                entry: format!("{from} -> {to}"),
                problem: "uses a wildcard; overrides map one origin to one origin",
            });
        }
        let to = Url::parse(to).map_err(|_| AllowListError::Entry {
            entry: to.to_string(),
            problem: "is not a valid URL",
        })?;
        Ok(BaseUrlOverride { from, to })
    }
}

/// Outcome of checking a request URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Egress {
    /// Send to this URL (rewritten when an operator override applies).
    Allow(Url),
    /// Refused; the string says which entry to add.
    Deny(String),
}

/// The effective HTTP policy of one plugin: its allow-list plus operator overrides.
#[derive(Debug, Clone, Default)]
pub struct HttpPolicy {
    allow: AllowList,
    overrides: Vec<BaseUrlOverride>,
}

impl HttpPolicy {
    /// Builds the policy from the manifest's allow-list and the operator's overrides.
    pub fn new(allow: AllowList, overrides: Vec<BaseUrlOverride>) -> HttpPolicy {
        HttpPolicy { allow, overrides }
    }

    /// Checks a request URL as the plugin wrote it and applies overrides; the destination must
    /// then pass the address rule (a literal non-public IP is refused unless it is an override's
    /// target).
    pub fn check(&self, url: &Url) -> Egress {
        if !self.allow.allows(url) {
            return Egress::Deny(not_allowed(url, "capabilities.http"));
        }
        address_rule(&self.overrides, rewrite(&self.overrides, url))
    }

    /// Checks a redirect hop (the `Location` resolved against the current destination): allowed
    /// inside the allow-list (then rewritten by an override, as requests are) or inside an
    /// override's target, and under the same address rule as [`check`](Self::check).
    pub fn check_redirect(&self, url: &Url) -> Egress {
        if self.allow.allows(url) {
            address_rule(&self.overrides, rewrite(&self.overrides, url))
        } else if inside_override_target(&self.overrides, url) {
            Egress::Allow(url.clone())
        } else {
            let wanted = Origin::of_url(url)
                .map(|o| o.to_string())
                .unwrap_or_else(|| format!("{}://?", url.scheme()));
            Egress::Deny(format!(
                "a redirect to {wanted} leaves the plugin's allow-list (capabilities.http)"
            ))
        }
    }

    /// Whether a destination (as returned by [`check`](Self::check)) is inside an operator
    /// override's target. Those are trusted as the operator wrote them: the host connects there
    /// whatever the address (loopback fakes included); every other destination goes through the
    /// resolver that refuses non-public addresses.
    pub fn is_override_target(&self, url: &Url) -> bool {
        inside_override_target(&self.overrides, url)
    }
}

/// The long-connection URLs the host may dial for one plugin: its manifest's
/// `capabilities.websocket` allow-list plus operator overrides. The URL comes from the plugin's
/// connect plan (usually the channel's endpoint-discovery answer), so it is checked like any
/// other egress before the host opens a socket.
#[derive(Debug, Clone, Default)]
pub struct WebSocketPolicy {
    allow: AllowList,
    overrides: Vec<BaseUrlOverride>,
}

impl WebSocketPolicy {
    /// Builds the policy from the manifest's allow-list and the operator's overrides.
    pub fn new(allow: AllowList, overrides: Vec<BaseUrlOverride>) -> WebSocketPolicy {
        WebSocketPolicy { allow, overrides }
    }

    /// Checks a URL to dial: allowed inside the allow-list (then rewritten by an override, as
    /// HTTP requests are) or inside an override's target (a discovery endpoint the operator
    /// pointed at a local server answers with that server's own URL).
    ///
    /// The destination is then under the address rule, as HTTP destinations are: a literal
    /// non-public IP is refused here unless it is an override's target.
    pub fn check(&self, url: &Url) -> Egress {
        if self.allow.allows(url) {
            address_rule(&self.overrides, rewrite(&self.overrides, url))
        } else if inside_override_target(&self.overrides, url) {
            Egress::Allow(url.clone())
        } else {
            Egress::Deny(not_allowed(url, "capabilities.websocket"))
        }
    }

    /// Whether a destination (as returned by [`check`](Self::check)) is inside an operator
    /// override's target, so it is dialled as written; any other is dialled only at the public
    /// addresses its name resolves to.
    pub fn is_override_target(&self, url: &Url) -> bool {
        inside_override_target(&self.overrides, url)
    }
}

/// Whether plugins may reach `ip` without an operator override: it is none of unspecified /
/// "this network" (0.0.0.0/8, `::`), loopback (127.0.0.0/8, `::1`), link-local (169.254.0.0/16,
/// fe80::/10), private (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, unique-local fc00::/7,
/// site-local fec0::/10), shared CGNAT space (100.64.0.0/10), multicast, broadcast or reserved
/// (240.0.0.0/4), nor an IPv6 address embedding one of these IPv4 addresses (IPv4-mapped
/// `::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`). The deprecated IPv4-compatible
/// block `::/96` and the local-use NAT64 prefix `64:ff9b:1::/48` are refused whole.
pub fn is_public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(a == 0 // "this network", including the unspecified address
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || a >= 224) // multicast, reserved and broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    let embedded = |high: u16, low: u16| {
        Ipv4Addr::new((high >> 8) as u8, high as u8, (low >> 8) as u8, low as u8)
    };
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    match segments {
        // Unspecified, loopback and the deprecated IPv4-compatible form: nothing public.
        [0, 0, 0, 0, 0, 0, _, _] => false,
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => is_public_v4(embedded(high, low)),
        [0x64, 0xff9b, 1, ..] => false,
        [0x2002, high, low, ..] => is_public_v4(embedded(high, low)),
        [first, ..] => {
            !((first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || (first & 0xff00) == 0xff00) // multicast
        }
    }
}

/// The address rule for a destination the policy let through: an override's target passes as
/// is; a literal IP must be public. DNS names are left to the resolver.
fn address_rule(overrides: &[BaseUrlOverride], destination: Url) -> Egress {
    if inside_override_target(overrides, &destination) {
        return Egress::Allow(destination);
    }
    let literal = match destination.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    };
    match literal {
        Some(ip) if !is_public_address(ip) => {
            let origin = Origin::of_url(&destination)
                .map(|o| o.to_string())
                .unwrap_or_else(|| ip.to_string());
            Egress::Deny(format!(
                "{origin} is a loopback, private or link-local address; plugins reach such \
                 addresses only through an operator base-URL override ([plugins.base_urls])"
            ))
        }
        _ => Egress::Allow(destination),
    }
}

fn not_allowed(url: &Url, field: &str) -> String {
    let wanted = Origin::of_url(url)
        .map(|o| o.to_string())
        .unwrap_or_else(|| format!("{}://?", url.scheme()));
    format!(
        "{wanted} is not in the plugin's allow-list; add \"{wanted}\" to {field} in its manifest \
         (or map it with an operator base-URL override)"
    )
}

fn rewrite(overrides: &[BaseUrlOverride], url: &Url) -> Url {
    for rule in overrides {
        if rule.from.matches(url) {
            let mut rewritten = rule.to.clone();
            let base = rule.to.path().trim_end_matches('/');
            rewritten.set_path(&format!("{base}{}", url.path()));
            rewritten.set_query(url.query());
            return rewritten;
        }
    }
    url.clone()
}

fn inside_override_target(overrides: &[BaseUrlOverride], url: &Url) -> bool {
    overrides
        .iter()
        .any(|rule| Origin::of_url(&rule.to).is_some_and(|o| o.matches(url)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn entries_match_scheme_host_and_port() {
        let list = AllowList::parse(&["https://api.example.com", "http://127.0.0.1:8080"]).unwrap();
        assert!(list.allows(&url("https://api.example.com/open-apis/x")));
        assert!(list.allows(&url("https://api.example.com:443/")));
        assert!(!list.allows(&url("http://api.example.com/")));
        assert!(!list.allows(&url("https://api.example.com:8443/")));
        assert!(!list.allows(&url("https://api.example.com.evil.com/")));
        assert!(list.allows(&url("http://127.0.0.1:8080/a")));
        assert!(!list.allows(&url("http://127.0.0.1:8081/a")));
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let list = AllowList::parse(&["https://*.example.org"]).unwrap();
        assert!(list.allows(&url("https://open.example.org/")));
        assert!(list.allows(&url("https://a.b.example.org/")));
        assert!(!list.allows(&url("https://example.org/")));
        assert!(!list.allows(&url("https://evilexample.org/")));
    }

    #[test]
    fn unsafe_entries_are_refused() {
        for entry in [
            "*",
            "https://*",
            "api.example.com",
            "ftp://x.org",
            "https://x.org/path",
            "https://u:p@x.org",
        ] {
            assert!(Origin::parse(entry).is_err(), "{entry} should be refused");
        }
        assert!(AllowList::parse::<&str>(&[]).unwrap().origins.is_empty());
    }

    #[test]
    fn overrides_rewrite_after_the_allow_list_check() {
        let policy = HttpPolicy::new(
            AllowList::parse(&["https://api.example.com"]).unwrap(),
            vec![BaseUrlOverride::new("https://api.example.com", "http://127.0.0.1:9300").unwrap()],
        );
        assert_eq!(
            policy.check(&url("https://api.example.com/open-apis/a?b=1")),
            Egress::Allow(url("http://127.0.0.1:9300/open-apis/a?b=1"))
        );
        // The override target itself is not something the plugin may name directly.
        assert!(matches!(
            policy.check(&url("http://127.0.0.1:9300/x")),
            Egress::Deny(_)
        ));
        assert!(policy.is_override_target(&url("http://127.0.0.1:9300/y")));
        assert_eq!(
            policy.check_redirect(&url("http://127.0.0.1:9300/y")),
            Egress::Allow(url("http://127.0.0.1:9300/y"))
        );
        // A redirect back to the allow-listed origin goes where the operator points it.
        assert_eq!(
            policy.check_redirect(&url("https://api.example.com/z")),
            Egress::Allow(url("http://127.0.0.1:9300/z"))
        );
        assert!(matches!(
            policy.check_redirect(&url("http://127.0.0.1:9301/y")),
            Egress::Deny(_)
        ));
        let Egress::Deny(why) = policy.check(&url("https://evil.example:444/")) else {
            panic!()
        };
        assert!(why.contains("https://evil.example:444"), "{why}");
    }

    #[test]
    fn websocket_urls_are_checked_against_their_own_allow_list() {
        let allow = AllowList::parse_websocket(&["wss://ws.example.com"]).unwrap();
        assert!(AllowList::parse_websocket(&["https://api.example.com"]).is_err());
        assert!(AllowList::parse(&["wss://ws.example.com"]).is_err());
        let bare = WebSocketPolicy::new(allow.clone(), Vec::new());
        let frontier = url("wss://ws.example.com/ws/v2?ticket=t");
        assert_eq!(bare.check(&frontier), Egress::Allow(frontier.clone()));
        let Egress::Deny(why) = bare.check(&url("ws://10.0.0.5:9000/ws/v2")) else {
            panic!("a URL outside the allow-list must be refused")
        };
        assert!(
            why.contains("ws://10.0.0.5:9000") && why.contains("capabilities.websocket"),
            "{why}"
        );

        // The operator points the channel at a local fake: its discovery answers with the
        // fake's own socket, which is allowed because an override targets it.
        let local = WebSocketPolicy::new(
            allow,
            vec![
                BaseUrlOverride::new("https://api.example.com", "http://127.0.0.1:9300").unwrap(),
                BaseUrlOverride::new("wss://ws.example.com", "ws://127.0.0.1:9301").unwrap(),
            ],
        );
        assert_eq!(
            local.check(&frontier),
            Egress::Allow(url("ws://127.0.0.1:9301/ws/v2?ticket=t"))
        );
        let fake = url("ws://127.0.0.1:9301/ws/v2?ticket=t");
        assert_eq!(local.check(&fake), Egress::Allow(fake.clone()));
        assert!(matches!(
            local.check(&url("ws://127.0.0.1:9999/ws")),
            Egress::Deny(_)
        ));
    }

    #[test]
    fn non_public_addresses_are_recognised_in_every_form() {
        for refused in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:c0a8:0101::1",
        ] {
            let ip: IpAddr = refused.parse().unwrap();
            assert!(!is_public_address(ip), "{refused} must be refused");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.169.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(is_public_address(ip), "{public} is public");
        }
    }

    #[test]
    fn literal_private_destinations_are_refused_unless_an_override_targets_them() {
        let policy = HttpPolicy::new(
            AllowList::parse(&[
                "http://127.0.0.1:8080",
                "http://[::ffff:10.0.0.1]",
                "http://169.254.169.254",
                "https://api.example.com",
                "http://8.8.8.8",
            ])
            .unwrap(),
            vec![BaseUrlOverride::new("https://api.example.com", "http://127.0.0.1:9300").unwrap()],
        );
        for denied in [
            "http://127.0.0.1:8080/a",
            "http://[::ffff:10.0.0.1]/a",
            "http://169.254.169.254/latest/meta-data",
        ] {
            let Egress::Deny(why) = policy.check(&url(denied)) else {
                panic!("{denied} must be refused")
            };
            assert!(why.contains("base-URL override"), "{why}");
            assert!(matches!(
                policy.check_redirect(&url(denied)),
                Egress::Deny(_)
            ));
        }
        assert_eq!(
            policy.check(&url("http://8.8.8.8/a")),
            Egress::Allow(url("http://8.8.8.8/a"))
        );
        // The override's target is loopback, and allowed: that is how local fakes are reached.
        let Egress::Allow(to) = policy.check(&url("https://api.example.com/v1")) else {
            panic!("the override applies")
        };
        assert_eq!(to, url("http://127.0.0.1:9300/v1"));
        assert!(policy.is_override_target(&to));
        assert!(!policy.is_override_target(&url("https://api.example.com/v1")));

        let ws = WebSocketPolicy::new(
            AllowList::parse_websocket(&["ws://10.0.0.5:9000"]).unwrap(),
            Vec::new(),
        );
        assert!(matches!(
            ws.check(&url("ws://10.0.0.5:9000/ws")),
            Egress::Deny(_)
        ));
    }
}
