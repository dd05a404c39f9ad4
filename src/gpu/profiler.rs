//! Per-kernel GPU timing. Attached to a [`KernelCache`](super::KernelCache), it times every dispatch
//! recorded with that cache: with timestamp queries around each compute pass where the device has them,
//! otherwise by waiting for each dispatch and taking wall time (which includes launch overhead, and says
//! so).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;

use super::{Gpu, Readback};

/// Queries per submission (two per dispatch), within wgpu's limit of 4096 per query set.
pub(crate) const QUERY_CAPACITY: u32 = 4096;

/// One timed dispatch.
#[derive(Clone, Debug)]
pub struct KernelTiming {
    pub name: String,
    /// Start relative to the first timed dispatch, in nanoseconds (for traces).
    pub start_ns: f64,
    pub duration_ns: f64,
    pub flops: f64,
    pub bytes: f64,
}

#[derive(Default)]
pub(crate) struct ProfilerState {
    /// Dispatches recorded in the current submission awaiting their timestamps.
    pub pending: Vec<(String, f64, f64)>,
    pub timings: Vec<KernelTiming>,
    pub origin_ticks: Option<u64>,
    pub origin_wall: Option<Instant>,
    /// Cost of the next dispatch, as its launcher declared it.
    pub next_cost: (f64, f64),
    pub query_set: Option<wgpu::QuerySet>,
    pub resolve: Option<wgpu::Buffer>,
}

/// A handle shared by the kernel cache and the caller that reads the results.
#[derive(Clone)]
pub struct Profiler {
    pub(crate) state: Arc<Mutex<ProfilerState>>,
    /// Timestamp queries available (otherwise wall time per dispatch).
    pub timestamps: bool,
}

impl Profiler {
    pub fn new(gpu: &Gpu) -> Self {
        let timestamps = gpu.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let mut state = ProfilerState::default();
        if timestamps {
            state.query_set = Some(gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kernel timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: QUERY_CAPACITY,
            }));
            state.resolve = Some(gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kernel timestamps resolved"),
                size: u64::from(QUERY_CAPACITY) * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }));
        }
        Self { state: Arc::new(Mutex::new(state)), timestamps }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ProfilerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the timestamps of a submitted recording (waits for it).
    pub(crate) fn collect(&self, gpu: &Gpu, readback: Option<Readback>) -> Result<()> {
        let Some(readback) = readback else { return Ok(()) };
        let pending = std::mem::take(&mut self.lock().pending);
        let ticks: Vec<u64> = readback.read(gpu, pending.len() * 2)?;
        let period = f64::from(gpu.queue.get_timestamp_period());
        let mut state = self.lock();
        let origin = *state.origin_ticks.get_or_insert(ticks.first().copied().unwrap_or(0));
        for (i, (name, flops, bytes)) in pending.into_iter().enumerate() {
            let (start, end) = (ticks[2 * i], ticks[2 * i + 1]);
            state.timings.push(KernelTiming {
                name,
                start_ns: start.saturating_sub(origin) as f64 * period,
                duration_ns: end.saturating_sub(start) as f64 * period,
                flops,
                bytes,
            });
        }
        Ok(())
    }

    /// Everything timed so far, and clears it.
    pub fn take(&self) -> Vec<KernelTiming> {
        std::mem::take(&mut self.lock().timings)
    }
}

/// Per-kernel totals of a set of timings, largest first.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelSummary {
    pub name: String,
    pub calls: usize,
    pub total_ms: f64,
    pub mean_us: f64,
    pub share: f64,
    pub gflops: f64,
    pub gbytes_per_s: f64,
}

pub fn summarize(timings: &[KernelTiming]) -> Vec<KernelSummary> {
    let mut by_name: BTreeMap<&str, (usize, f64, f64, f64)> = BTreeMap::new();
    for t in timings {
        let e = by_name.entry(&t.name).or_default();
        e.0 += 1;
        e.1 += t.duration_ns;
        e.2 += t.flops;
        e.3 += t.bytes;
    }
    let total: f64 = timings.iter().map(|t| t.duration_ns).sum::<f64>().max(1e-9);
    let mut rows: Vec<KernelSummary> = by_name
        .into_iter()
        .map(|(name, (calls, ns, flops, bytes))| KernelSummary {
            name: name.to_string(),
            calls,
            total_ms: ns / 1e6,
            mean_us: ns / 1e3 / calls as f64,
            share: ns / total,
            gflops: if ns > 0.0 { flops / ns } else { 0.0 },
            gbytes_per_s: if ns > 0.0 { bytes / ns } else { 0.0 },
        })
        .collect();
    rows.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    rows
}

/// A Chrome/Perfetto trace (the JSON array format) of the timings.
pub fn chrome_trace(timings: &[KernelTiming]) -> serde_json::Value {
    serde_json::Value::Array(
        timings
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name, "ph": "X", "pid": 0, "tid": 0,
                    "ts": t.start_ns / 1e3, "dur": t.duration_ns / 1e3,
                    "args": {"gflop": t.flops / 1e9, "mbytes": t.bytes / 1e6},
                })
            })
            .collect(),
    )
}
