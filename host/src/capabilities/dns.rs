//! The address rule at resolution time: plugin egress to a DNS name connects only to the public
//! addresses the name resolves to.
//!
//! The system resolver answers; every loopback, private, link-local, CGNAT or otherwise
//! non-public address ([`is_public_address`]) is dropped from the answer before a connection is
//! attempted, and an answer with nothing left is a [`RefusedAddresses`] error naming the host.
//! Because the connection is made to the filtered answer itself, a name cannot pass a check and
//! then re-resolve elsewhere (DNS rebinding). Literal IP hosts never reach a resolver; the policy
//! checks those ([`super::policy`]). Destinations inside an operator override's target do not use
//! this rule: the operator named them.

use std::net::SocketAddr;
use std::sync::Arc;

use super::policy::is_public_address;

/// A name resolved only to addresses plugins may not reach.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error(
    "{host} resolves only to loopback, private or link-local addresses ({addresses}); plugins \
     reach such addresses only through an operator base-URL override ([plugins.base_urls])"
)]
pub struct RefusedAddresses {
    /// The name as requested.
    pub host: String,
    /// What it resolved to, comma-separated.
    pub addresses: String,
}

/// Resolves `host` with the system resolver and keeps its public addresses (with `port`).
///
/// Errors: the resolver's own failure, or [`RefusedAddresses`] when every address was dropped.
pub async fn resolve_public(
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    let public: Vec<SocketAddr> = resolved
        .iter()
        .copied()
        .filter(|addr| is_public_address(addr.ip()))
        .collect();
    if public.is_empty() && !resolved.is_empty() {
        let mut shown: Vec<String> = resolved.iter().map(|a| a.ip().to_string()).collect();
        shown.sort();
        shown.dedup();
        return Err(Box::new(RefusedAddresses {
            host: host.to_string(),
            addresses: shown.join(", "),
        }));
    }
    Ok(public)
}

/// The [`RefusedAddresses`] somewhere in an error's source chain, if any (reqwest and hyper wrap
/// the resolver's error a few times).
pub fn refused_in<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a RefusedAddresses> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(refused) = error.downcast_ref::<RefusedAddresses>() {
            return Some(refused);
        }
        next = error.source();
    }
    None
}

/// The reqwest resolver of the plugin HTTP client that applies the address rule.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PublicOnly;

impl PublicOnly {
    /// Shared, as reqwest's builder takes it.
    pub(crate) fn shared() -> Arc<PublicOnly> {
        Arc::new(PublicOnly)
    }
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port (or the scheme's) in place.
            let addresses = resolve_public(&host, 0).await?;
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_for_loopback_is_refused_and_named() {
        let error = resolve_public("localhost", 80)
            .await
            .expect_err("localhost is loopback only");
        let refused = refused_in(error.as_ref()).expect("a refusal, not a resolver failure");
        assert_eq!(refused.host, "localhost");
        assert!(
            refused.to_string().contains("localhost resolves only to"),
            "{refused}"
        );
        assert!(refused.addresses.contains("127.0.0.1") || refused.addresses.contains("::1"));
    }
}
