//! The tools users ask, through their public interfaces: `explain` (parsing, the three-tier
//! example read in words, and random clusters where the rule-by-rule reading must give the
//! compiled maps' verdict), `lint` (each kind of finding fires on a small change to the clean
//! three-tier example) and `graph` (edges exactly where `explain` allows, grouping, output).

mod explain;
mod graph;
mod lint;
