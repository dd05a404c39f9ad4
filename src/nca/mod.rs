//! Neural cellular automata: random rules, their simulation on the CPU and the GPU, tokens, the gzip
//! complexity filter and the data sets built from them.

pub mod complexity;
pub mod gpu;
pub mod reference;
pub mod rule;
pub mod spec;

pub use rule::{Rule, RuleTable, TableLayout};
pub use spec::{NcaSpec, TokenLayout};
