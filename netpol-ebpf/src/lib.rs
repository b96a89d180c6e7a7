//! Empty library target: lets netpol-agent name this crate as a build dependency, so cargo
//! rebuilds the agent (and with it the embedded object) when the programs change.
#![no_std]
