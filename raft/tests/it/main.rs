//! Integration tests of the raft glue: openraft's own storage conformance suite run
//! against our log store and state machine, each on fresh files.

mod group;
mod node;
mod suite;
mod wal;
