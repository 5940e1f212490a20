//! Test agent: makes the one HTTP request its params describe, through `wasi:http`, and
//! returns what it saw as its outcome: the status, the response headers and body, or the
//! error text. It may set one header of its own (`header` and `value` params), which is
//! how the red-team tests try to forge a credential.
//!
//! Params (all text): `url` (required), `method` (default `GET`), `header` and `value`,
//! `body`. Outcome: `{"status": 200, "headers": [[name, value], ...], "body": "..."}` or
//! `{"error": "..."}`. An error is an outcome too, so the tests can read it.

use baton_sdk::{Agent, Outcome, ParamValue, Task};
use serde_json::{Value, json};
use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

struct Fetcher;

fn param<'a>(task: &'a Task, name: &str) -> Option<&'a str> {
    task.params()
        .iter()
        .find(|p| p.name == name)
        .and_then(|p| match &p.value {
            ParamValue::Text(t) => Some(t.as_str()),
            _ => None,
        })
}

/// `scheme://authority/path?query`, split the way `wasi:http` wants it.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("`{url}` has no scheme"))?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((scheme, authority, path))
}

fn fetch(task: &Task) -> Result<Value, String> {
    let url = param(task, "url").ok_or("no `url` param")?;
    let (scheme, authority, path) = split_url(url)?;
    let method = match param(task, "method").unwrap_or("GET") {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        other => Method::Other(other.to_string()),
    };

    let headers = Fields::new();
    if let (Some(name), Some(value)) = (param(task, "header"), param(task, "value")) {
        headers
            .append(name, value.as_bytes())
            .map_err(|e| format!("cannot set header `{name}`: {e:?}"))?;
    }
    let body = param(task, "body");
    if let Some(b) = body {
        headers
            .append("content-length", b.len().to_string().as_bytes())
            .map_err(|e| format!("cannot set content-length: {e:?}"))?;
    }

    let request = OutgoingRequest::new(headers);
    request
        .set_method(&method)
        .map_err(|()| "invalid method".to_string())?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| "invalid scheme".to_string())?;
    request
        .set_authority(Some(authority))
        .map_err(|()| format!("invalid authority `{authority}`"))?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| format!("invalid path `{path}`"))?;
    let outgoing = request.body().map_err(|()| "no request body")?;

    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    {
        let stream = outgoing.write().map_err(|()| "no body stream")?;
        if let Some(b) = body {
            for chunk in b.as_bytes().chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| format!("writing the body: {e:?}"))?;
            }
        }
    }
    OutgoingBody::finish(outgoing, None).map_err(|e| format!("{e:?}"))?;

    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("the response is not ready")?
        .map_err(|()| "the response was already taken")?
        .map_err(|e| format!("{e:?}"))?;

    let status = response.status();
    let headers: Vec<Value> = response
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| json!([name, String::from_utf8_lossy(&value)]))
        .collect();
    let incoming = response.consume().map_err(|()| "no response body")?;
    let mut bytes = Vec::new();
    {
        let stream = incoming.stream().map_err(|()| "no body stream")?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(wasi::io::streams::StreamError::Closed) => break,
                Err(e) => return Err(format!("reading the body: {e:?}")),
            }
        }
    }
    Ok(json!({
        "status": status,
        "headers": headers,
        "body": String::from_utf8_lossy(&bytes),
    }))
}

impl Agent for Fetcher {
    fn handle(task: Task) -> Result<Outcome, String> {
        let seen = fetch(&task).unwrap_or_else(|error| json!({ "error": error }));
        Outcome::new(format!("fetched for {}", task.id()))
            .json(&seen)
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Fetcher);
