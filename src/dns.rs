//! DNS lookups the gateway makes itself: the TXT record that confirms a hosted domain.
//!
//! hickory-resolver, through the resolvers `[dns] resolvers` names (default: the system's,
//! from /etc/resolv.conf). Nothing is cached: a confirmation asks again each time, so a record
//! published a moment ago counts as soon as the resolvers serve it.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver as Hickory, TokioResolver};

/// Where TXT records come from (a trait, so the account service's unit tests can stand in).
#[async_trait::async_trait]
pub trait TxtLookup: Send + Sync {
    /// The TXT records at `name`, each with its character-strings joined; none is `Ok(empty)`.
    async fn txt(&self, name: &str) -> Result<Vec<String>, String>;
}

/// The real resolver.
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// Through `resolvers` (`IP` or `IP:PORT`, port 53 by default), or the system's if empty.
    pub fn new(resolvers: &[String]) -> Result<Self, String> {
        let mut builder = if resolvers.is_empty() {
            Hickory::builder_tokio().map_err(|e| format!("[dns]: the system's resolvers: {e}"))?
        } else {
            let mut servers = Vec::new();
            for entry in resolvers {
                let address = entry
                    .parse::<SocketAddr>()
                    .or_else(|_| entry.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| format!("[dns] resolvers: {entry:?} is not IP or IP:PORT"))?;
                let mut server = NameServerConfig::udp_and_tcp(address.ip());
                for connection in &mut server.connections {
                    connection.port = address.port();
                }
                servers.push(server);
            }
            Hickory::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options = builder.options_mut();
        options.cache_size = 0;
        options.timeout = std::time::Duration::from_secs(5);
        options.attempts = 2;
        let inner = builder
            .build()
            .map_err(|e| format!("[dns]: cannot build the resolver: {e}"))?;
        Ok(Self { inner })
    }
}

#[async_trait::async_trait]
impl TxtLookup for Resolver {
    async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        // Fully qualified: no search domains.
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.inner.txt_lookup(fqdn).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }
}
