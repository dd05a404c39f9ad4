// Reductions over a workgroup of 256 invocations on subgroup operations: each subgroup reduces in
// registers, then every invocation combines the subgroups' results in subgroup order. Two barriers
// instead of the tree's nine, and the order of every addition is still fixed, so results repeat run to
// run. The interface of group_reduce_tree.wgsl, for adapters with wgpu's SUBGROUP feature (which
// this WGSL front end takes without an `enable` directive).

// The builtins of an entry point.
struct Invocation {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_invocation_id) lane: u32,
}

// One value per subgroup (at most 256 subgroups of one invocation each).
var<workgroup> group_scratch: array<f32, 256>;

// The sum of `value` over the workgroup, for every invocation. Every invocation must call it.
fn group_sum(inv: Invocation, value: f32) -> f32 {
    let partial = subgroupAdd(value);
    if (inv.lane == 0u) {
        group_scratch[inv.subgroup] = partial;
    }
    workgroupBarrier();
    var total = group_scratch[0];
    for (var i = 1u; i < inv.subgroups; i++) {
        total += group_scratch[i];
    }
    // Before a later call overwrites the scratch.
    workgroupBarrier();
    return total;
}

// The largest `value` over the workgroup, for every invocation. Every invocation must call it.
fn group_max(inv: Invocation, value: f32) -> f32 {
    let partial = subgroupMax(value);
    if (inv.lane == 0u) {
        group_scratch[inv.subgroup] = partial;
    }
    workgroupBarrier();
    var largest = group_scratch[0];
    for (var i = 1u; i < inv.subgroups; i++) {
        largest = max(largest, group_scratch[i]);
    }
    workgroupBarrier();
    return largest;
}

