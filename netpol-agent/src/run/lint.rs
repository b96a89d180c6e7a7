//! Lint inside the agent: each changed snapshot is handed to a thread of its own, at the lowest
//! CPU priority and at most once per interval, and each finding that was not there at the last
//! lint is logged as a warning with its object, rule, code and fix.

use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

/// Clusters with more pods x policies than this are not linted inside the agent: the lint's
/// pairwise checks would take minutes of CPU and a compiled copy of the cluster per node
/// (10 000 pods x 1 000 policies: 3 min 22 s); `netpol-agent lint` does it on demand.
const LINT_BUDGET: usize = 200_000;

/// The newest snapshot waiting to be linted, and the signal that one is there.
static LINT_PENDING: (std::sync::Mutex<Option<crate::model::ClusterState>>, std::sync::Condvar) =
    (std::sync::Mutex::new(None), std::sync::Condvar::new());

/// Hands a copy of `state` to the lint thread (started on first use), replacing any snapshot it
/// has not got to yet: linting a large cluster takes a while, and enforcement must not wait for
/// it, nor lint a backlog of states already gone. The thread lints at most once per `interval`
/// (the first call's).
pub(super) fn lint_in_background(state: &crate::model::ClusterState, interval: Duration) {
    static STARTED: std::sync::Once = std::sync::Once::new();
    static TOO_LARGE: std::sync::Once = std::sync::Once::new();
    if state.pods.len().saturating_mul(state.policies.len().max(1)) > LINT_BUDGET {
        TOO_LARGE.call_once(|| {
            info!(
                pods = state.pods.len(),
                policies = state.policies.len(),
                "cluster too large to lint inside the agent (pods x policies over {LINT_BUDGET}); run `netpol-agent lint` instead"
            );
        });
        return;
    }
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new().name("lint".into()).spawn(move || loop {
            let state = {
                let (slot, ready) = &LINT_PENDING;
                let mut pending = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                loop {
                    if let Some(state) = pending.take() {
                        break state;
                    }
                    pending = ready.wait(pending).unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            };
            // Advice must not compete with enforcement: the lowest CPU priority for this thread.
            // SAFETY: setpriority on this thread's own id; a failure only leaves the priority.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t, 19) };
            let started = Instant::now();
            warn_lint_findings(&state);
            drop(state);
            // A lint allocates (and frees) a compiled copy of the cluster per node; give the
            // freed memory back rather than keep it as the thread's arena high-water mark.
            // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
            unsafe { libc::malloc_trim(0) };
            debug!(elapsed_ms = started.elapsed().as_millis() as u64, "linted");
            // Findings are advice: at most one lint per interval (and at least ten times as long
            // as the lint took), of the newest state then.
            let took = started.elapsed();
            std::thread::sleep(interval.max(took.saturating_mul(10)).saturating_sub(took));
        });
        if let Err(e) = spawned {
            warn!(error = %e, "could not start the lint thread; lint findings are not logged");
        }
    });
    let (slot, ready) = &LINT_PENDING;
    *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(state.clone());
    ready.notify_one();
}

/// The lint findings already logged (only the lint thread uses it); a finding is logged again
/// only after it went away and came back.
static LINT_REPORTED: std::sync::Mutex<std::collections::BTreeSet<crate::tools::lint::Finding>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Logs each lint finding of `state` that was not there at the last lint as a warning, with
/// the finding's object, rule, code and fix as fields. Objects left out as invalid are not
/// linted again here: the sync already logs them.
fn warn_lint_findings(state: &crate::model::ClusterState) {
    let findings = crate::tools::lint::lint(state, &crate::tools::lint::Extra::default());
    let mut reported = LINT_REPORTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for f in new_findings(&mut reported, &findings) {
        warn!(target: "netpol_agent::tools::lint", object = %f.object, rule = %f.rule, code = %f.code, fix = %f.fix, "{}", f.message);
    }
}

/// Keeps in `reported` only the findings of `current`, and returns those of them that were not
/// in it (to log now; they count as reported from here on).
fn new_findings<'a>(
    reported: &mut std::collections::BTreeSet<crate::tools::lint::Finding>,
    current: &'a [crate::tools::lint::Finding],
) -> Vec<&'a crate::tools::lint::Finding> {
    let now: std::collections::BTreeSet<&crate::tools::lint::Finding> = current.iter().collect();
    reported.retain(|f| now.contains(f));
    current.iter().filter(|f| reported.insert((*f).clone())).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::new_findings;
    use crate::tools::lint::Finding;

    fn finding(object: &str, code: &str) -> Finding {
        Finding { object: object.into(), rule: "ingress[0]".into(), code: code.into(), message: "m".into(), fix: "f".into() }
    }

    #[test]
    fn each_finding_is_logged_once_while_it_lasts_and_again_when_it_comes_back() {
        let a = finding("NetworkPolicy x/a", "peers-ored");
        let b = finding("NetworkPolicy x/b", "namespace-label-unknown");
        let codes = |v: Vec<&Finding>| v.into_iter().map(|f| f.code.clone()).collect::<Vec<_>>();
        let mut reported = BTreeSet::new();
        assert_eq!(codes(new_findings(&mut reported, &[a.clone(), b.clone()])), ["peers-ored", "namespace-label-unknown"]);
        assert!(new_findings(&mut reported, &[a.clone(), b.clone()]).is_empty(), "no repeats while they last");
        assert!(new_findings(&mut reported, std::slice::from_ref(&a)).is_empty(), "b fixed");
        assert_eq!(codes(new_findings(&mut reported, &[a.clone(), b.clone()])), ["namespace-label-unknown"], "b broken again");
        assert!(new_findings(&mut reported, &[]).is_empty(), "all fixed");
        assert_eq!(reported, BTreeSet::new());
        assert_eq!(new_findings(&mut reported, &[a.clone(), a.clone()]).len(), 1, "a duplicate is logged once");
    }
}
