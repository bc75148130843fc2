//! An HTTP event of Lambda (API Gateway REST v1, HTTP API v2, an ALB target group, a
//! Function URL) made into the app's `http::Request`, without `lambda_http`.
//!
//! Why not `lambda_http`: its conversion (`impl From<LambdaRequest> for
//! http::Request`, `lambda_http/src/request.rs`) builds the URI from the event's
//! strings and ends in `.expect("failed to build request")`, and on the way
//! `build_request_uri` calls `Url::parse(..).unwrap()`. So a `rawQueryString` holding
//! `"{}|^`, a space or a control byte (API Gateway hands on what the client sent), a
//! REST query parameter that needs escaping, or a `Host` header that is no host, makes
//! it panic before the handler runs: the invocation errors, and the function's error
//! alarm fires for what is the caller's nonsense. Sanitising the event first would mean
//! knowing each of its panics (query, path, host, per event kind) and keeping up with
//! them; the webhook needs five fields, so it reads them itself:
//!
//! - method: `requestContext.http.method` (v2, Function URL) or `httpMethod` (v1, ALB);
//! - path: `rawPath` or `path`, with every byte a URI cannot carry percent-encoded;
//! - query: v2's `rawQueryString` as sent, percent-encoding the bytes a URI cannot
//!   carry (existing `%` escapes are kept); v1's (multi-value) query parameters, which
//!   API Gateway decoded, encoded again as a form; an ALB's parameters, which it did
//!   not decode, joined as sent and sanitised like v2's;
//! - headers: v2's `headers` (and `cookies`), v1/ALB's `multiValueHeaders` plus
//!   `headers`; a header `http` cannot hold (a control byte, a bad name) is left out;
//! - body: `body`, base64-decoded when `isBase64Encoded`.
//!
//! Nothing here panics: what cannot become a request is an [`EventError`], answered
//! with a 4xx by the caller. The stage is not put in front of the path as
//! `lambda_http` does: the app routes on the path's end (`…/webhook`).

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{COOKIE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::Deserialize;

/// Bytes percent-encoded in a query: those `http::Uri` refuses, and `#` (API Gateway
/// sends no fragment, so a `#` there is data).
const QUERY: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Bytes percent-encoded in a path: a query's, and `?`, which would start one.
const PATH: &AsciiSet = &QUERY.add(b'?');

/// Why an event is not a request the app can be asked.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Neither SQS nor HTTP: another event source, or a mangled event.
    #[error("unknown event: {0}")]
    Unknown(String),
    #[error("invalid request method")]
    Method,
    /// Only a URI over `http`'s length limit (64 KiB) is left to refuse.
    #[error("invalid request URI")]
    Uri,
    #[error("invalid base64 body")]
    Body,
}

impl EventError {
    /// The status the event is answered with: the caller's mistake, every time.
    pub fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }

    /// The answer's body: short, and never quoting the event.
    pub fn answer(&self) -> &'static str {
        match self {
            EventError::Unknown(_) => "unknown event",
            EventError::Method => "invalid request method",
            EventError::Uri => "invalid request URI",
            EventError::Body => "invalid base64 body",
        }
    }
}

/// The fields read, of every HTTP event kind (absent or `null`: `None`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpEvent {
    raw_path: Option<String>,
    raw_query_string: Option<String>,
    cookies: Option<Vec<String>>,
    http_method: Option<String>,
    path: Option<String>,
    query_string_parameters: Option<BTreeMap<String, String>>,
    multi_value_query_string_parameters: Option<BTreeMap<String, Vec<String>>>,
    headers: Option<BTreeMap<String, String>>,
    multi_value_headers: Option<BTreeMap<String, Vec<String>>>,
    body: Option<String>,
    is_base64_encoded: Option<bool>,
    request_context: Option<RequestContext>,
}

#[derive(Debug, Deserialize)]
struct RequestContext {
    /// HTTP API v2 and Function URLs.
    http: Option<V2Http>,
    /// ALB target groups.
    elb: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct V2Http {
    method: Option<String>,
    path: Option<String>,
}

/// The request an HTTP event stands for.
pub fn to_request(payload: serde_json::Value) -> Result<Request<Bytes>, EventError> {
    let event: HttpEvent = serde_json::from_value(payload)
        .map_err(|e| EventError::Unknown(crate::engine::json_problem(&e)))?;
    let context = event.request_context.as_ref();
    let v2 = context.and_then(|c| c.http.as_ref());
    let (method, path, query) = match (v2, &event.http_method) {
        (Some(http), _) => (
            http.method.as_deref().unwrap_or("GET"),
            event.raw_path.as_deref().or(http.path.as_deref()),
            event
                .raw_query_string
                .as_deref()
                .map(|q| utf8_percent_encode(q, QUERY).to_string())
                .unwrap_or_default(),
        ),
        (None, Some(method)) => {
            let alb = context.is_some_and(|c| c.elb.is_some());
            (
                method.as_str(),
                event.path.as_deref(),
                v1_query(&event, alb),
            )
        }
        (None, None) => {
            return Err(EventError::Unknown(
                "no requestContext.http.method and no httpMethod".into(),
            ));
        }
    };
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| EventError::Method)?;
    let path = utf8_percent_encode(path.unwrap_or("/"), PATH).to_string();
    let slash = if path.starts_with('/') { "" } else { "/" };
    let uri = match query.is_empty() {
        true => format!("{slash}{path}"),
        false => format!("{slash}{path}?{query}"),
    };
    let uri = Uri::try_from(uri).map_err(|_| EventError::Uri)?;
    let body = match (event.body, event.is_base64_encoded.unwrap_or(false)) {
        (None, _) => Bytes::new(),
        (Some(body), false) => Bytes::from(body),
        (Some(body), true) => base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map(Bytes::from)
            .map_err(|_| EventError::Body)?,
    };
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers(
        event.multi_value_headers,
        event.headers,
        event.cookies.filter(|c| !c.is_empty()),
    );
    Ok(request)
}

/// The query of a v1 (REST) or ALB event, from its parameters (multi-value ones when
/// there are any: they hold the single-value ones too).
fn v1_query(event: &HttpEvent, alb: bool) -> String {
    let single = event.query_string_parameters.iter().flatten();
    let pairs: Vec<(&str, &str)> = match &event.multi_value_query_string_parameters {
        Some(multi) if !multi.is_empty() => multi
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.as_str(), v.as_str())))
            .collect(),
        _ => single.map(|(k, v)| (k.as_str(), v.as_str())).collect(),
    };
    if alb {
        // An ALB passes the parameters as the client wrote them (still escaped).
        let joined: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        utf8_percent_encode(&joined.join("&"), QUERY).to_string()
    } else {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    }
}

/// The headers `http` can hold; the rest are left out (and counted in the log).
fn headers(
    multi: Option<BTreeMap<String, Vec<String>>>,
    single: Option<BTreeMap<String, String>>,
    cookies: Option<Vec<String>>,
) -> HeaderMap {
    let mut map = HeaderMap::new();
    let mut dropped = 0usize;
    let mut add = |map: &mut HeaderMap, name: &str, value: &str| match (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        (Ok(name), Ok(value)) => {
            map.append(name, value);
        }
        _ => dropped += 1,
    };
    for (name, values) in multi.into_iter().flatten() {
        for value in values {
            add(&mut map, &name, &value);
        }
    }
    // v1 and ALB events repeat each header in both maps; only new names are added.
    for (name, value) in single.into_iter().flatten() {
        let known = HeaderName::from_bytes(name.as_bytes()).is_ok_and(|n| map.contains_key(n));
        if !known {
            add(&mut map, &name, &value);
        }
    }
    if let Some(cookies) = cookies {
        add(&mut map, COOKIE.as_str(), &cookies.join("; "));
    }
    if dropped > 0 {
        // Names and values are the caller's: neither is logged.
        tracing::debug!(dropped, "left out headers that HTTP cannot carry");
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v2(method: &str, path: &str, query: &str) -> serde_json::Value {
        json!({
            "version": "2.0",
            "rawPath": path,
            "rawQueryString": query,
            "headers": {"host": "example.com", "x-a": "1,2"},
            "requestContext": {"http": {"method": method, "path": path}, "stage": "$default"},
            "isBase64Encoded": false
        })
    }

    #[test]
    fn a_v2_query_keeps_its_escapes_and_encodes_what_a_uri_cannot_carry() {
        let r = to_request(v2("GET", "/webhook", "a=%20x&b=\"{}|^ é#")).unwrap();
        assert_eq!(r.method(), Method::GET);
        assert_eq!(r.uri().path(), "/webhook");
        assert_eq!(
            r.uri().query(),
            Some("a=%20x&b=%22%7B%7D%7C%5E%20%C3%A9%23")
        );
        assert_eq!(r.headers()["x-a"], "1,2");
        let values: Vec<_> = form_urlencoded::parse(r.uri().query().unwrap().as_bytes())
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(values, [" x", "\"{}|^ é#"]);
    }

    #[test]
    fn a_path_is_escaped_and_made_absolute() {
        let r = to_request(v2("POST", "web hook?{x}", "")).unwrap();
        assert_eq!(r.uri().path(), "/web%20hook%3F%7Bx%7D");
        assert_eq!(r.uri().query(), None);
    }

    #[test]
    fn a_v1_query_is_encoded_again_from_its_decoded_parameters() {
        let event = json!({
            "httpMethod": "GET", "path": "/webhook",
            "queryStringParameters": {"q": "only single"},
            "multiValueQueryStringParameters": {"hub.mode": ["subscribe"], "q": ["a&b=c", "\"{}"]},
            "headers": {"Host": "h", "X-One": "1"},
            "multiValueHeaders": {"Host": ["h"]},
            "requestContext": {"stage": "prod"}, "body": null, "isBase64Encoded": false
        });
        let r = to_request(event).unwrap();
        let pairs: Vec<(String, String)> =
            form_urlencoded::parse(r.uri().query().unwrap().as_bytes())
                .into_owned()
                .collect();
        assert_eq!(
            pairs,
            [
                ("hub.mode".into(), "subscribe".into()),
                ("q".into(), "a&b=c".into()),
                ("q".into(), "\"{}".into())
            ]
        );
        assert_eq!(r.headers().get_all("host").iter().count(), 1);
        assert_eq!(r.headers()["x-one"], "1");
    }

    #[test]
    fn an_alb_query_is_joined_as_sent() {
        let event = json!({
            "requestContext": {"elb": {"targetGroupArn": "arn"}},
            "httpMethod": "GET", "path": "/webhook",
            "queryStringParameters": {"a": "x%20y", "b": "{\"}"},
            "headers": {}, "body": "", "isBase64Encoded": false
        });
        let r = to_request(event).unwrap();
        assert_eq!(r.uri().query(), Some("a=x%20y&b=%7B%22%7D"));
    }

    #[test]
    fn bodies_base64_and_cookies() {
        let mut event = v2("POST", "/webhook", "");
        event["body"] = json!("aGk=");
        event["isBase64Encoded"] = json!(true);
        event["cookies"] = json!(["a=1", "b=2"]);
        let r = to_request(event.clone()).unwrap();
        assert_eq!(r.body().as_ref(), b"hi");
        assert_eq!(r.headers()["cookie"], "a=1; b=2");
        event["body"] = json!("not base64!");
        assert!(matches!(to_request(event), Err(EventError::Body)));
    }

    #[test]
    fn nonsense_is_an_error_never_a_panic() {
        assert!(matches!(
            to_request(v2("GE T", "/webhook", "")),
            Err(EventError::Method)
        ));
        let long = "a".repeat(70_000);
        let e = to_request(v2("GET", "/webhook", &long)).unwrap_err();
        assert!(matches!(e, EventError::Uri));
        assert_eq!(
            (e.status(), e.answer()),
            (StatusCode::BAD_REQUEST, "invalid request URI")
        );
        assert!(matches!(
            to_request(json!({"hello": "world"})),
            Err(EventError::Unknown(_))
        ));
        assert!(matches!(
            to_request(json!({"httpMethod": 7})),
            Err(EventError::Unknown(_))
        ));
        let mut event = v2("GET", "/webhook", "");
        event["headers"] = json!({"bad name": "v", "x-ctl": "a\u{1}b", "ok": "fine"});
        let r = to_request(event).unwrap();
        assert_eq!(r.headers().len(), 1);
        assert_eq!(r.headers()["ok"], "fine");
    }
}
