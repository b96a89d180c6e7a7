//! netpol sandbox.
