//! The offline answers users ask for: [`explain`] (one flow, and why), [`lint`] (policies that
//! are valid but probably wrong) and [`graph`] (who can reach whom). Verdicts come from the
//! compiler and its evaluator ([`crate::compile::eval`]), the reasons from the model.
pub mod explain;
pub mod graph;
pub mod lint;
