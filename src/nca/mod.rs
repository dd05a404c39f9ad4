//! Neural cellular automata: random rules, their simulation on the CPU and the GPU, tokens, the gzip
//! complexity filter and the data sets built from them.

pub mod accuracy;
pub mod complexity;
pub mod dataset;
pub mod fit;
pub mod gpu;
pub mod reference;
pub mod render;
pub mod rule;
pub mod simulator;
pub mod spec;
pub mod stats;

pub use rule::{Rule, RuleTable, TableLayout};
pub use simulator::{CpuSimulator, Recording, SimRequest, Simulate};
pub use spec::{NcaSpec, TokenLayout};
