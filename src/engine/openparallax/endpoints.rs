//! Where the engine listens: the WebSocket URL and the login URL beside it, and the
//! session cookie its login sets.

use reqwest::Url;

use crate::domain::Secret;

/// Name of the engine's session cookie.
pub(super) const COOKIE_NAME: &str = "op_session";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Endpoints {
    pub(super) ws: String,
    pub(super) login: String,
}

/// `op_session=VALUE` from one `Set-Cookie` header value, if it is that cookie.
pub(super) fn session_cookie(set_cookie: &str) -> Option<Secret> {
    let pair = set_cookie.split(';').next()?.trim();
    let (name, value) = pair.split_once('=')?;
    let value = value.trim();
    (name.trim() == COOKIE_NAME && !value.is_empty())
        .then(|| Secret::new(format!("{COOKIE_NAME}={value}")))
}

impl Endpoints {
    /// `ws(s)://HOST:PORT/api/ws` and the matching `http(s)://HOST:PORT/api/login`.
    /// A root path means `/api/ws`; a path ending in `/ws` (behind a prefix) logs
    /// in at the sibling `/login`; any other path logs in at `/api/login`.
    pub(super) fn from_url(url: &str) -> Result<Endpoints, String> {
        let unusable = "the engine URL must look like ws://HOST:PORT/api/ws or wss://HOST/api/ws";
        let mut ws = Url::parse(url).map_err(|_| unusable.to_string())?;
        let (ws_scheme, http_scheme) = match ws.scheme() {
            "ws" | "http" => ("ws", "http"),
            "wss" | "https" => ("wss", "https"),
            _ => return Err(unusable.into()),
        };
        if ws.host_str().is_none_or(str::is_empty) {
            return Err(unusable.into());
        }
        ws.set_scheme(ws_scheme)
            .map_err(|()| unusable.to_string())?;
        if ws.path() == "/" || ws.path().is_empty() {
            ws.set_path("/api/ws");
        }
        let mut login = ws.clone();
        login
            .set_scheme(http_scheme)
            .map_err(|()| unusable.to_string())?;
        let login_path = match ws.path().strip_suffix("/ws") {
            Some(prefix) => format!("{prefix}/login"),
            None => "/api/login".to_string(),
        };
        login.set_path(&login_path);
        login.set_query(None);
        login.set_fragment(None);
        ws.set_fragment(None);
        Ok(Endpoints {
            ws: ws.to_string(),
            login: login.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(url: &str) -> Endpoints {
        match Endpoints::from_url(url) {
            Ok(endpoints) => endpoints,
            Err(e) => panic!("{url}: {e}"),
        }
    }

    #[test]
    fn derives_the_login_url_from_the_websocket_url() {
        assert_eq!(
            endpoints("ws://engine.local:3100/api/ws"),
            Endpoints {
                ws: "ws://engine.local:3100/api/ws".into(),
                login: "http://engine.local:3100/api/login".into(),
            }
        );
        assert_eq!(
            endpoints("wss://agent.example.com/api/ws"),
            Endpoints {
                ws: "wss://agent.example.com/api/ws".into(),
                login: "https://agent.example.com/api/login".into(),
            }
        );
    }

    #[test]
    fn accepts_bare_hosts_http_schemes_and_prefixes() {
        assert_eq!(
            endpoints("ws://10.0.0.5:3100"),
            Endpoints {
                ws: "ws://10.0.0.5:3100/api/ws".into(),
                login: "http://10.0.0.5:3100/api/login".into(),
            }
        );
        assert_eq!(
            endpoints("https://example.com/op/api/ws"),
            Endpoints {
                ws: "wss://example.com/op/api/ws".into(),
                login: "https://example.com/op/api/login".into(),
            }
        );
    }

    #[test]
    fn rejects_other_urls() {
        for url in ["", "engine:3100", "ftp://host/api/ws", "ws://", "/api/ws"] {
            assert!(Endpoints::from_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn picks_the_session_cookie() {
        let pick = |header: &str| session_cookie(header).map(|c| c.expose().to_string());
        assert_eq!(
            pick("op_session=abc123; Path=/; HttpOnly; SameSite=Strict").as_deref(),
            Some("op_session=abc123")
        );
        assert_eq!(pick("other=1; Path=/"), None);
        assert_eq!(pick("op_session=; Max-Age=0"), None);
    }
}
