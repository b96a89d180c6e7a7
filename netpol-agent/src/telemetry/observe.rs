//! `netpol-agent observe`: the client of a running agent's `/events` stream
//! ([`crate::telemetry::http`]), printing each verdict as a line of text or JSON.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    time::Duration,
};

use anyhow::{bail, Context as _};

use crate::telemetry::events::{EventFilter, VerdictRecord};

/// One line of the stream: a record, or how many records this reader lost by falling behind.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamLine {
    /// A verdict.
    Record(Box<VerdictRecord>),
    /// Records the agent could not keep for this slow reader.
    Lost(u64),
}

/// Parses one line of the `/events` stream.
pub fn parse_line(line: &str) -> anyhow::Result<StreamLine> {
    let value: serde_json::Value = serde_json::from_str(line).context("not JSON")?;
    if let Some(n) = value.get("lost").and_then(serde_json::Value::as_u64) {
        return Ok(StreamLine::Lost(n));
    }
    Ok(StreamLine::Record(Box::new(serde_json::from_value(value).context("not a verdict record")?)))
}

/// Streams the agent's verdicts that pass `filter` to stdout until the agent closes the stream,
/// stdout closes, or `count` records were printed. `token` is sent as a bearer token.
pub fn observe(agent: &str, token: Option<&str>, filter: &EventFilter, json: bool, count: Option<u64>) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(agent).with_context(|| format!("connect to the agent at {agent} (its --health-addr)"))?;
    stream.set_write_timeout(Some(Duration::from_secs(5))).context("set write timeout")?;
    // HTTP/1.0: the body runs, unchunked, until the agent closes the connection.
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET /events?{} HTTP/1.0\r\nHost: {agent}\r\n{auth}\r\n", filter.to_query()).context("send the request")?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).context("read the agent's answer")?;
    let mut header = String::new();
    while reader.read_line(&mut header).context("read the answer's headers")? > 0 && header.trim_end() != "" {
        header.clear();
    }
    if status.split_whitespace().nth(1).is_none_or(|code| code != "200") {
        let mut body = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut body);
        bail!("the agent at {agent} answered {}: {}", status.trim_end(), body.trim_end());
    }
    let stdout = std::io::stdout();
    let mut printed = 0u64;
    for line in reader.lines() {
        let line = line.context("read the event stream")?;
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
            r => r.context("write to stdout")?,
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
