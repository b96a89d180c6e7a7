//! Label selectors (`metav1.LabelSelector`), validated once and matched many times.
//!
//! API: "matchLabels is a map of {key,value} pairs ... The requirements are ANDed."
//! "An empty label selector matches all objects. A null label selector matches no objects."
//! The null case is handled by callers (an absent selector field means something per field).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Requirement {
    /// `key` has one of `values` (matchLabels entries are `In` with one value).
    In(String, Vec<String>),
    /// `key` is absent, or has none of `values`.
    NotIn(String, Vec<String>),
    /// `key` is present.
    Exists(String),
    /// `key` is absent.
    DoesNotExist(String),
}

/// A validated label selector: all requirements must hold. No requirements matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    /// The requirements, ANDed.
    pub requirements: Vec<Requirement>,
}

/// A label selector that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// `In` or `NotIn` without values.
    #[error("matchExpressions key {key:?}: operator {operator} needs values")]
    NeedsValues {
        /// The key.
        key: String,
        /// The operator.
        operator: String,
    },
    /// `Exists` or `DoesNotExist` with values.
    #[error("matchExpressions key {key:?}: operator {operator} takes no values")]
    TakesNoValues {
        /// The key.
        key: String,
        /// The operator.
        operator: String,
    },
    /// An operator the API does not have.
    #[error("matchExpressions key {key:?}: unknown operator {operator:?}")]
    UnknownOperator {
        /// The key.
        key: String,
        /// The operator.
        operator: String,
    },
}

impl Selector {
    /// The selector that matches every object (`{}`).
    pub fn everything() -> Self {
        Self::default()
    }

    /// Validates a Kubernetes label selector.
    pub fn parse(sel: &LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement::In(k.clone(), vec![v.clone()]));
        }
        for e in sel.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let req = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => return Err(SelectorError::NeedsValues { key: e.key.clone(), operator: e.operator.clone() }),
                "In" => Requirement::In(e.key.clone(), values),
                "NotIn" => Requirement::NotIn(e.key.clone(), values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(SelectorError::TakesNoValues { key: e.key.clone(), operator: e.operator.clone() })
                }
                "Exists" => Requirement::Exists(e.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
                other => return Err(SelectorError::UnknownOperator { key: e.key.clone(), operator: other.to_string() }),
            };
            requirements.push(req);
        }
        Ok(Self { requirements })
    }

    /// Whether the selector matches everything.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() { None } else { Some(values.iter().map(|v| (*v).to_string()).collect()) },
        }
    }

    fn sel(ml: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> Selector {
        Selector::parse(&LabelSelector {
            match_labels: if ml.is_empty() { None } else { Some(labels(ml)) },
            match_expressions: if exprs.is_empty() { None } else { Some(exprs) },
        })
        .expect("valid selector")
    }

    #[test]
    fn empty_selector_matches_everything_even_no_labels() {
        let s = sel(&[], vec![]);
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_are_anded() {
        let s = sel(&[("app", "web"), ("tier", "front")], vec![]);
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "front"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
    }

    #[test]
    fn in_matches_any_listed_value() {
        let s = sel(&[], vec![expr("env", "In", &["prod", "stage"])]);
        assert!(s.matches(&labels(&[("env", "stage")])));
        assert!(!s.matches(&labels(&[("env", "dev")])));
        assert!(!s.matches(&labels(&[])));
    }

    #[test]
    fn not_in_matches_when_key_is_absent() {
        let s = sel(&[], vec![expr("env", "NotIn", &["prod"])]);
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("env", "dev")])));
        assert!(!s.matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn exists_and_does_not_exist_look_only_at_keys() {
        let e = sel(&[], vec![expr("k", "Exists", &[])]);
        let d = sel(&[], vec![expr("k", "DoesNotExist", &[])]);
        assert!(e.matches(&labels(&[("k", "")])));
        assert!(!e.matches(&labels(&[])));
        assert!(d.matches(&labels(&[])));
        assert!(!d.matches(&labels(&[("k", "v")])));
    }

    #[test]
    fn match_labels_and_expressions_together_are_anded() {
        let s = sel(&[("app", "db")], vec![expr("env", "NotIn", &["dev"])]);
        assert!(s.matches(&labels(&[("app", "db"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("env", "dev")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
    }

    #[test]
    fn invalid_selectors_are_rejected_with_the_reason() {
        let bad = |e| Selector::parse(&LabelSelector { match_labels: None, match_expressions: Some(vec![e]) });
        assert!(bad(expr("k", "Equals", &["v"])).unwrap_err().to_string().contains("unknown operator"));
        assert!(bad(expr("k", "In", &[])).unwrap_err().to_string().contains("needs values"));
        assert!(bad(expr("k", "Exists", &["v"])).unwrap_err().to_string().contains("takes no values"));
    }
}
