//! Checks of selectors: namespace selectors that match no namespace (or name one by a label no
//! namespace carries), selectors that cannot match anything.

use super::Linter;
use crate::{
    model::{
        selector::{Requirement, Selector},
        NAMESPACE_NAME_LABEL,
    },
    tools::explain::selector_text,
};

impl Linter<'_> {

    /// Whether a namespaceSelector's keys exist; reports the ones no namespace carries, and a
    /// selector that matches no namespace. Returns whether the selector matches a namespace.
    pub(super) fn namespace_selector(&mut self, object: &str, at: &str, sel: &Selector) -> bool {
        let mut ok = true;
        for r in &sel.requirements {
            let (Requirement::In(key, _) | Requirement::Exists(key)) = r else { continue };
            if self.namespaces.values().any(|labels| labels.contains_key(key)) {
                continue;
            }
            ok = false;
            let fix = match r {
                Requirement::In(k, vs) if k == "name" && vs.len() == 1 => {
                    format!(
                        "namespaces are not labelled `name` unless someone did it; select by the label the API server sets: `{NAMESPACE_NAME_LABEL}: {}`",
                        vs[0]
                    )
                }
                _ => format!("label the namespaces (kubectl label namespace ... {key}=...), or select them by `{NAMESPACE_NAME_LABEL}`"),
            };
            self.push(
                object.to_string(),
                at,
                "namespace-label-unknown",
                format!("no namespace carries the label {key:?}, so namespaceSelector {} matches no namespace and the peer allows nothing", selector_text(sel)),
                fix,
            );
        }
        if ok && !self.namespaces.values().any(|labels| sel.matches(labels)) {
            ok = false;
            self.push(
                object.to_string(),
                at,
                "namespace-selector-matches-nothing",
                format!(
                    "namespaceSelector {} matches none of the namespaces ({}): the peer allows nothing",
                    selector_text(sel),
                    self.namespaces.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                "check the label values against `kubectl get namespaces --show-labels`".to_string(),
            );
        }
        ok
    }

    /// A selector whose requirements contradict each other.
    pub(super) fn selector(&mut self, object: &str, at: &str, sel: &Selector) {
        if let Some(why) = contradiction(sel) {
            self.push(
                object.to_string(),
                at,
                "selector-never-matches",
                format!("selector {} can never match: {why}", selector_text(sel)),
                "the requirements are ANDed: drop or correct the one that contradicts the others".to_string(),
            );
        }
    }
}


/// Why the requirements of a selector cannot all hold, if they cannot.
fn contradiction(sel: &Selector) -> Option<String> {
    let reqs = &sel.requirements;
    for (a, ra) in reqs.iter().enumerate() {
        for rb in &reqs[a + 1..] {
            let why = match (ra, rb) {
                (Requirement::In(k, _) | Requirement::Exists(k), Requirement::DoesNotExist(l))
                | (Requirement::DoesNotExist(l), Requirement::In(k, _) | Requirement::Exists(k))
                    if k == l =>
                {
                    Some(format!("{k} must both exist and not exist"))
                }
                (Requirement::In(k, vs), Requirement::In(l, ws)) if k == l && !vs.iter().any(|v| ws.contains(v)) => {
                    Some(format!("{k} cannot be in ({}) and in ({}) at once", vs.join(", "), ws.join(", ")))
                }
                (Requirement::In(k, vs), Requirement::NotIn(l, ws)) | (Requirement::NotIn(l, ws), Requirement::In(k, vs))
                    if k == l && vs.iter().all(|v| ws.contains(v)) =>
                {
                    Some(format!("every value {k} may have ({}) is excluded by notin ({})", vs.join(", "), ws.join(", ")))
                }
                _ => None,
            };
            if why.is_some() {
                return why;
            }
        }
    }
    None
}
