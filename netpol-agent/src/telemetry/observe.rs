//! `netpol-agent observe`: the client of a running agent's `/events` stream
//! ([`crate::telemetry::http`]), printing each verdict as a line of text or JSON.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    time::Duration,
};

use crate::telemetry::events::{EventFilter, VerdictRecord};

/// Why `observe` stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// Talking to the agent, or writing what it sent, failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The agent refused the stream.
    #[error("the agent at {agent} answered {status}: {body}")]
    Refused {
        /// The agent's address.
        agent: String,
        /// Its status line.
        status: String,
        /// Its answer.
        body: String,
    },
}

/// A line of the stream that is not one.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct BadLine {
    what: &'static str,
    source: serde_json::Error,
}

/// One line of the stream: a record, or how many records this reader lost by falling behind.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamLine {
    /// A verdict.
    Record(Box<VerdictRecord>),
    /// Records the agent could not keep for this slow reader.
    Lost(u64),
}

/// Parses one line of the `/events` stream.
pub fn parse_line(line: &str) -> Result<StreamLine, BadLine> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|source| BadLine { what: "not JSON", source })?;
    if let Some(n) = value.get("lost").and_then(serde_json::Value::as_u64) {
        return Ok(StreamLine::Lost(n));
    }
    Ok(StreamLine::Record(Box::new(serde_json::from_value(value).map_err(|source| BadLine { what: "not a verdict record", source })?)))
}

/// Streams the agent's verdicts that pass `filter` to stdout until the agent closes the stream,
/// stdout closes, or `count` records were printed. `token` is sent as a bearer token.
pub fn observe(agent: &str, token: Option<&str>, filter: &EventFilter, json: bool, count: Option<u64>) -> Result<(), ObserveError> {
    let io = |op: &str| {
        let op = op.to_string();
        move |source| ObserveError::Io { op, source }
    };
    let mut stream = TcpStream::connect(agent).map_err(io(&format!("connect to the agent at {agent} (its --health-addr)")))?;
    stream.set_write_timeout(Some(Duration::from_secs(5))).map_err(io("set write timeout"))?;
    // HTTP/1.0: the body runs, unchunked, until the agent closes the connection.
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET /events?{} HTTP/1.0\r\nHost: {agent}\r\n{auth}\r\n", filter.to_query()).map_err(io("send the request"))?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).map_err(io("read the agent's answer"))?;
    let mut header = String::new();
    while reader.read_line(&mut header).map_err(io("read the answer's headers"))? > 0 && header.trim_end() != "" {
        header.clear();
    }
    if status.split_whitespace().nth(1).is_none_or(|code| code != "200") {
        let mut body = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut body);
        return Err(ObserveError::Refused { agent: agent.to_string(), status: status.trim_end().to_string(), body: body.trim_end().to_string() });
    }
    let stdout = std::io::stdout();
    let mut printed = 0u64;
    for line in reader.lines() {
        let line = line.map_err(io("read the event stream"))?;
        if line.is_empty() {
            continue;
        }
        let text = match parse_line(&line) {
            Ok(StreamLine::Record(r)) if filter.matches(&r) => {
                if json {
                    line
                } else {
                    r.to_string()
                }
            }
            Ok(StreamLine::Record(_)) => continue,
            Ok(StreamLine::Lost(n)) => {
                eprintln!("observe: {n} events lost (this reader fell behind)");
                continue;
            }
            Err(e) => {
                eprintln!("observe: skipped a line the agent sent: {e:#}");
                continue;
            }
        };
        let mut out = stdout.lock();
        match writeln!(out, "{text}").and_then(|()| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            r => r.map_err(io("write to stdout"))?,
        }
        printed += 1;
        if count.is_some_and(|c| printed >= c) {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_lines_are_records_or_losses() {
        assert_eq!(parse_line(r#"{"lost":12}"#).unwrap(), StreamLine::Lost(12));
        let line = r#"{"time":"t","node":"n","pod":"a/b","direction":"ingress","verdict":"dropped","reason":"drop_no_rule",
            "explanation":"x","protocol":"TCP","source":{"ip":"198.18.0.2","port":1},"destination":{"ip":"198.18.0.3","port":80,"pod":"a/b","namespace":"a"}}"#;
        let StreamLine::Record(r) = parse_line(&line.replace('\n', "")).unwrap() else { panic!("not a record") };
        assert_eq!((r.pod.as_str(), r.destination.port, r.suppressed), ("a/b", Some(80), 0));
        assert!(parse_line("nonsense").is_err());
    }
}
