//! Which verdict records a subscriber wants: by namespace, pod and verdict, as `observe`'s
//! flags and the `/events` query name them.

use std::collections::BTreeSet;

use super::record::{VerdictRecord, ALLOWED, AUDIT, DROPPED, VERDICTS};

/// A filter that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A value with characters no name has.
    #[error("{key}: {value:?} is not a namespace, pod or verdict name")]
    BadValue {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// A key the filter does not know.
    #[error("unknown filter {0:?} (namespace, pod, verdict)")]
    UnknownKey(String),
    /// A verdict that does not exist.
    #[error("unknown verdict {0:?} (allowed, dropped, audit, all)")]
    UnknownVerdict(String),
    /// An empty verdict list.
    #[error("no verdict given (allowed, dropped, audit, all)")]
    NoVerdict,
}

/// Which records a subscriber wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFilter {
    /// Only flows with an end in this namespace.
    pub namespace: Option<String>,
    /// Only flows with this pod at one end (`namespace/name`, or a name in any namespace).
    pub pod: Option<String>,
    /// Only these verdicts (`allowed`, `dropped`, `audit`).
    pub verdicts: BTreeSet<String>,
}

impl Default for EventFilter {
    /// Drops and audit "would drop"s: what the data path reports unless asked for more.
    fn default() -> Self {
        Self { namespace: None, pod: None, verdicts: [DROPPED, AUDIT].iter().map(ToString::to_string).collect() }
    }
}

impl EventFilter {
    /// Whether the record passes the filter.
    pub fn matches(&self, r: &VerdictRecord) -> bool {
        self.verdicts.contains(&r.verdict)
            && self.namespace.as_deref().is_none_or(|ns| r.touches_namespace(ns))
            && self.pod.as_deref().is_none_or(|p| r.touches_pod(p))
    }

    /// Whether the subscriber wants allowed flows, which the data path reports only on request.
    pub fn wants_allowed(&self) -> bool {
        self.verdicts.contains(ALLOWED)
    }

    /// The filter as a URL query (`namespace=..&pod=..&verdict=a,b`).
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(ns) = &self.namespace {
            parts.push(format!("namespace={ns}"));
        }
        if let Some(pod) = &self.pod {
            parts.push(format!("pod={pod}"));
        }
        parts.push(format!("verdict={}", self.verdicts.iter().cloned().collect::<Vec<_>>().join(",")));
        parts.join("&")
    }

    /// Parses [`Self::to_query`]'s form; `verdict=all` means every verdict. Missing keys keep
    /// the default.
    pub fn from_query(query: &str) -> Result<Self, FilterError> {
        let mut filter = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '/' | ',' | '_')) {
                return Err(FilterError::BadValue { key: key.to_string(), value: value.to_string() });
            }
            match key {
                "namespace" if !value.is_empty() => filter.namespace = Some(value.to_string()),
                "pod" if !value.is_empty() => filter.pod = Some(value.to_string()),
                "verdict" => filter.verdicts = parse_verdicts(value)?,
                _ => return Err(FilterError::UnknownKey(key.to_string())),
            }
        }
        Ok(filter)
    }
}

/// Parses a comma-separated verdict list (`all` for every verdict).
pub fn parse_verdicts(list: &str) -> Result<BTreeSet<String>, FilterError> {
    let mut out = BTreeSet::new();
    for v in list.split(',').map(str::trim).filter(|v| !v.is_empty()) {
        match v {
            "all" => out.extend(VERDICTS.iter().map(ToString::to_string)),
            "would-drop" | "would_drop" => {
                out.insert(AUDIT.to_string());
            }
            v if VERDICTS.contains(&v) => {
                out.insert(v.to_string());
            }
            v => return Err(FilterError::UnknownVerdict(v.to_string())),
        }
    }
    if out.is_empty() {
        return Err(FilterError::NoVerdict);
    }
    Ok(out)
}
