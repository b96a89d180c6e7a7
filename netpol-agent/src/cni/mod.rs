//! The CNI chain plugin `netpol-cni`, which closes the race between a pod's veth appearing and
//! its policy being programmed: the plugin itself ([`plugin`], run by the container runtime),
//! its installation into a node's CNI directories ([`install`]), and the agent's end of its
//! socket ([`server`]). From outside, the run loop serves the socket and installs the plugin;
//! the binary runs [`plugin::main`].
pub mod error;
pub mod install;
pub mod plugin;
pub mod server;
