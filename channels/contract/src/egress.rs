//! Where tenant-set URLs may lead: the egress policy.
//!
//! A tenant chooses `callback_url`, `api_url` and `graph_url`, and a provider's answer chooses a
//! media URL. Left alone, any of them could point the gateway at our own network — loopback,
//! the cloud metadata address (169.254.169.254), private ranges — and read or probe it. So by
//! default a request from a channel may not reach a loopback, private, link-local, shared
//! (CGNAT), multicast or unspecified address. The operator lists exceptions
//! (`SWITCHBOARD_EGRESS_ALLOW`: hosts, CIDRs or `host:port`, e.g. a self-hosted Bot API server).
//!
//! Enforcement, on every request of the channel HTTP client ([`client_builder`]):
//! - names are checked on the addresses they resolve to, at connect time, by the client's DNS
//!   resolver ([`GuardedResolver`]), so a name that resolves to an internal address (DNS
//!   rebinding) is refused however it was written;
//! - IP literals never reach a resolver, so every request URL — redirects included — is checked
//!   before it connects (the client's per-request proxy hook, [`literal_guard`]);
//! - configuration is checked when it is saved ([`EgressPolicy::check_url`]), port included, so a
//!   tenant is told at once.
//!
//! Every download is capped ([`read_capped`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// The host name a refused literal is sent to; the resolver refuses it with the reason encoded
/// in the first label.
const REFUSED_SUFFIX: &str = ".egress-refused.invalid";

/// One exception to the default refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    Host(String),
    HostPort(String, u16),
    Net(IpNet),
    NetPort(IpNet, u16),
}

/// Which internal destinations outbound calls may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allowed: Vec<Allowed>,
}

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{target} is a {kind} address, which outbound calls may not reach (the operator can allow it with SWITCHBOARD_EGRESS_ALLOW)"
)]
pub struct Refused {
    pub target: String,
    pub kind: &'static str,
}

impl EgressPolicy {
    /// Refuses every internal destination.
    pub fn strict() -> EgressPolicy {
        EgressPolicy::default()
    }

    /// From `SWITCHBOARD_EGRESS_ALLOW` entries: `localhost`, `10.0.0.0/8`, `127.0.0.1`,
    /// `127.0.0.1:8081`, `botapi.internal:8081`, `[::1]:8081`.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<EgressPolicy, String> {
        let mut allowed = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            allowed.push(parse_entry(entry).ok_or_else(|| {
                format!("SWITCHBOARD_EGRESS_ALLOW: {entry:?} is not a host, a CIDR or host:port")
            })?);
        }
        Ok(EgressPolicy { allowed })
    }

    /// May a connection to `ip` (named `host`) on `port` be made? `port: None` asks about any
    /// port (the resolver does not know it).
    pub fn permits(&self, host: &str, ip: IpAddr, port: Option<u16>) -> Result<(), Refused> {
        let Some(kind) = internal_kind(ip) else {
            return Ok(());
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let port_ok = |p: u16| port.is_none_or(|q| q == p);
        let allowed = self.allowed.iter().any(|a| match a {
            Allowed::Host(h) => *h == host,
            Allowed::HostPort(h, p) => *h == host && port_ok(*p),
            Allowed::Net(n) => n.contains(&ip),
            // An address with a port allows that port only: a name that resolves to it (port
            // unknown to the resolver) is not let through by it.
            Allowed::NetPort(n, p) => n.contains(&ip) && port == Some(*p),
        });
        if allowed {
            Ok(())
        } else {
            Err(Refused {
                target: match port {
                    Some(p) => format!("{host}:{p} ({ip})"),
                    None => format!("{host} ({ip})"),
                },
                kind,
            })
        }
    }

    /// Checks a URL a tenant wants to save: http(s), and every address its host resolves to
    /// permitted on its port.
    pub async fn check_url(&self, url: &str) -> Result<(), String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("{url:?}: must be an http or https URL"));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| format!("{url:?}: has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| format!("{host}: the name does not resolve ({e})"))?
                .collect(),
        };
        for addr in addrs {
            self.permits(&host, addr.ip(), Some(port))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The check of one request URL before it connects: an IP literal (which reaches no
    /// resolver) on its port, and a name allowed only on some ports (`host:port` entries) on
    /// one of them. Other names are left to the resolver.
    fn check_request(&self, url: &reqwest::Url) -> Result<(), String> {
        let Some(host) = url.host_str() else {
            return Ok(());
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_or_known_default();
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.permits(bare, ip, port).map_err(|e| e.to_string());
        }
        let host = bare.trim_end_matches('.').to_ascii_lowercase();
        let ports: Vec<u16> = self
            .allowed
            .iter()
            .filter_map(|a| match a {
                Allowed::HostPort(h, p) if *h == host => Some(*p),
                _ => None,
            })
            .collect();
        let any_port = self
            .allowed
            .iter()
            .any(|a| matches!(a, Allowed::Host(h) if *h == host));
        if ports.is_empty() || any_port || port.is_some_and(|p| ports.contains(&p)) {
            Ok(())
        } else {
            Err(format!(
                "{host} is allowed on port {} only (SWITCHBOARD_EGRESS_ALLOW)",
                ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }
}

fn parse_entry(entry: &str) -> Option<Allowed> {
    let lower = entry.to_ascii_lowercase();
    if let Ok(net) = lower.parse::<IpNet>() {
        return Some(Allowed::Net(net));
    }
    if let Ok(ip) = lower.parse::<IpAddr>() {
        return Some(Allowed::Net(IpNet::from(ip)));
    }
    if let Ok(addr) = lower.parse::<SocketAddr>() {
        return Some(Allowed::NetPort(IpNet::from(addr.ip()), addr.port()));
    }
    if let Some((host, port)) = lower.rsplit_once(':') {
        let port = port.parse::<u16>().ok()?;
        if let Ok(net) = host.parse::<IpNet>() {
            return Some(Allowed::NetPort(net, port));
        }
        return valid_host(host).then(|| Allowed::HostPort(host.to_owned(), port));
    }
    valid_host(&lower).then(|| Allowed::Host(lower.clone()))
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}

/// What kind of internal address `ip` is, or `None` for a public one.
pub fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_kind(v4);
            }
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("private (unique local)")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                // NAT64: the IPv4 address it translates to decides.
                let v4 =
                    Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                v4_kind(v4)
            } else if v6 == Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1) {
                Some("loopback")
            } else {
                None
            }
        }
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_broadcast() || ip.is_multicast() || o[0] >= 240 {
        Some("reserved")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("reserved (IETF)")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking")
    } else {
        None
    }
}

/// The channel client's DNS resolver: resolves with the system's resolver, then keeps only the
/// addresses the policy permits; none left → the connection fails with the reason.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let permitted = resolve(&policy, &host).await?;
            let addrs: reqwest::dns::Addrs = Box::new(permitted.into_iter());
            Ok(addrs)
        })
    }
}

/// Resolves `host` with the system's resolver and keeps the addresses `policy` permits (for any
/// port); none left → an error with the reason. The body of every HTTP client's resolver (the
/// channels' reqwest, and teloxide's own reqwest for Telegram).
pub async fn resolve(
    policy: &EgressPolicy,
    host: &str,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    // A request [`EgressPolicy::refusal_proxy`] stopped: the reason is in the name.
    if let Some(reason) = host.strip_suffix(REFUSED_SUFFIX) {
        return Err(format!("egress refused: {}", decode_reason(reason)).into());
    }
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
    let mut refused = None;
    let permitted: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|a| match policy.permits(host, a.ip(), None) {
            Ok(()) => true,
            Err(e) => {
                refused.get_or_insert(e);
                false
            }
        })
        .collect();
    if permitted.is_empty() {
        return Err(match refused {
            Some(e) => format!("egress refused: {e}").into(),
            None => format!("{host} resolves to no address").into(),
        });
    }
    Ok(permitted)
}

/// The reason a request was refused, as DNS labels (the resolver gives it back in its error):
/// letters and digits as they are, anything else as `-` and two hex digits.
fn encode_reason(reason: &str) -> String {
    // Lower case: URL parsing lowers host names.
    let reason = reason.to_ascii_lowercase();
    let mut encoded = String::new();
    for b in reason.bytes().take(80) {
        if b.is_ascii_alphanumeric() {
            encoded.push(b.to_ascii_lowercase() as char);
        } else {
            encoded.push_str(&format!("-{b:02x}"));
        }
    }
    let chars: Vec<char> = encoded.chars().collect();
    chars
        .chunks(60)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(".")
}

fn decode_reason(labels: &str) -> String {
    let joined: String = labels.split('.').collect();
    let bytes = joined.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'-'
            && let Some(b) = joined
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl EgressPolicy {
    /// The per-request hook that catches IP literals, which reach no resolver (and names
    /// allowed on some ports only): for a refused URL, the URL of a "proxy" whose name
    /// [`resolve`] refuses with the reason. reqwest asks its proxy hook for every connection
    /// it makes, redirects included.
    pub fn refusal_proxy(&self, url: &reqwest::Url) -> Option<String> {
        self.check_request(url)
            .err()
            .map(|reason| format!("http://{}{REFUSED_SUFFIX}:9", encode_reason(&reason)))
    }
}

/// A client builder whose every connection obeys `policy`.
pub fn client_builder(policy: EgressPolicy) -> reqwest::ClientBuilder {
    let policy = Arc::new(policy);
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver {
            policy: policy.clone(),
        }))
        .proxy(reqwest::Proxy::custom(move |url| policy.refusal_proxy(url)))
        .redirect(reqwest::redirect::Policy::limited(5))
}

/// A request error with its causes (an egress refusal is one, from the resolver), without the
/// URL (which may hold a token): `error sending request: …: egress refused: …`.
pub fn describe(e: reqwest::Error) -> String {
    describe_chain(&e.without_url())
}

/// An error and its causes, each once.
pub fn describe_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Why a capped download stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    #[error("the file is larger than {0} MiB")]
    TooLarge(usize),
    /// The connection failed mid-way (the error without its URL, which may hold a token).
    #[error("the download failed: {0}")]
    Failed(String),
}

impl From<DownloadError> for crate::SendError {
    fn from(e: DownloadError) -> Self {
        match e {
            DownloadError::TooLarge(_) => crate::SendError::Permanent(e.to_string()),
            DownloadError::Failed(_) => crate::SendError::Transient(e.to_string()),
        }
    }
}

/// Reads a response body of at most `max` bytes; a larger one (announced or sent) is refused
/// without reading the rest.
pub async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, DownloadError> {
    let too_large = || DownloadError::TooLarge(max / (1024 * 1024));
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| DownloadError::Failed(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_named() {
        for (ip, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00::1", "private (unique local)"),
            ("fe80::1", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(internal_kind(ip), Some(kind), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111", "149.154.167.220"] {
            assert_eq!(internal_kind(ip.parse().expect("ip")), None, "{ip}");
        }
    }

    #[test]
    fn the_allow_list_takes_hosts_cidrs_and_ports() {
        let policy =
            EgressPolicy::parse(&["localhost", "10.0.0.0/8", "127.0.0.1:8081", "bot.lan:9000"])
                .expect("parses");
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        assert!(policy.permits("localhost", lo, Some(1)).is_ok());
        assert!(policy.permits("127.0.0.1", lo, Some(8081)).is_ok());
        assert!(policy.permits("127.0.0.1", lo, Some(8082)).is_err());
        assert!(
            policy
                .permits("bot.lan", "192.168.1.9".parse().expect("ip"), Some(9000))
                .is_ok()
        );
        assert!(
            policy
                .permits("bot.lan", "192.168.1.9".parse().expect("ip"), Some(80))
                .is_err()
        );
        assert!(
            policy
                .permits("x", "10.9.9.9".parse().expect("ip"), Some(80))
                .is_ok()
        );
        assert!(
            policy
                .permits("x", "169.254.169.254".parse().expect("ip"), Some(80))
                .is_err()
        );
        assert!(EgressPolicy::parse(&["not a host!"]).is_err());
        assert!(EgressPolicy::parse(&["host:99999"]).is_err());
    }

    #[test]
    fn refusal_reasons_survive_the_trip_through_a_host_name() {
        let reason =
            "127.0.0.1:9 (127.0.0.1) is a loopback address, which outbound calls may not reach";
        let encoded = encode_reason(reason);
        assert!(reqwest::Url::parse(&format!("http://{encoded}{REFUSED_SUFFIX}:9")).is_ok());
        assert!(encoded.split('.').all(|l| l.len() <= 63));
        assert_eq!(decode_reason(&encoded), reason[..80].to_ascii_lowercase());
    }

    #[tokio::test]
    async fn saved_urls_are_checked_on_their_resolved_addresses() {
        let strict = EgressPolicy::strict();
        for url in [
            "http://127.0.0.1:9/x",
            "http://localhost:8080/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/",
            "http://0.0.0.0:22/",
            "http://[::ffff:10.0.0.1]/",
            "ftp://example.com/",
        ] {
            assert!(
                strict.check_url(url).await.is_err(),
                "{url} must be refused"
            );
        }
        let allowed = EgressPolicy::parse(&["127.0.0.1:9"]).expect("parses");
        assert!(allowed.check_url("http://127.0.0.1:9/x").await.is_ok());
        assert!(allowed.check_url("http://127.0.0.1:10/x").await.is_err());
    }
}
