// Reductions over a workgroup of 256 invocations, prepended to the shaders that need them: a fixed
// pairwise tree in workgroup memory, eight barriers deep. group_reduce_subgroups.wgsl offers the same
// interface on subgroup operations; an op is built with that one where the adapter has subgroups.

// The builtins of an entry point.
struct Invocation {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
}

var<workgroup> group_scratch: array<f32, 256>;

// The sum of `value` over the workgroup, for every invocation. Every invocation must call it.
fn group_sum(inv: Invocation, value: f32) -> f32 {
    group_scratch[inv.lid] = value;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (inv.lid < stride) {
            group_scratch[inv.lid] += group_scratch[inv.lid + stride];
        }
        workgroupBarrier();
    }
    let total = group_scratch[0];
    // Before a later call overwrites the scratch.
    workgroupBarrier();
    return total;
}

// The largest `value` over the workgroup, for every invocation. Every invocation must call it.
fn group_max(inv: Invocation, value: f32) -> f32 {
    group_scratch[inv.lid] = value;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (inv.lid < stride) {
            group_scratch[inv.lid] = max(group_scratch[inv.lid], group_scratch[inv.lid + stride]);
        }
        workgroupBarrier();
    }
    let largest = group_scratch[0];
    workgroupBarrier();
    return largest;
}

