//! Cooperative-matrix kernels without a device that has cooperative matrices: each is translated as
//! wgpu's Vulkan backend translates it (naga's SPIR-V writer, SPIR-V 1.6 for Vulkan 1.3), and the
//! SPIR-V must pass SPIRV-Tools' validator where one that knows cooperative matrices (2023.2 or later)
//! is installed: `spirv-val`, or the one `SPIRV_VAL` names.

use std::process::Command;

use naga::back::spv;

use crate::gpu::Shader;

/// Translates each entry point of `shader` to SPIR-V and validates it where a validator is installed.
pub(crate) fn translates(shader: &Shader, entry_points: &[&str]) {
    let validator = std::env::var("SPIRV_VAL").unwrap_or_else(|_| "spirv-val".into());
    let mut validate = Command::new(&validator).arg("--version").output().is_ok();
    if !validate {
        eprintln!("{validator} (SPIRV-Tools) not found: the SPIR-V is written but not validated");
    }
    let dir = tempfile::tempdir().unwrap();
    let (module, info) = crate::gpu::validate_wgsl(shader.name, &shader.full_source()).unwrap();
    for entry in entry_points {
        let name = format!("{} {entry}", shader.name);
        let options = spv::Options { lang_version: (1, 6), ..spv::Options::default() };
        let stage = naga::ShaderStage::Compute;
        let pipeline = spv::PipelineOptions { shader_stage: stage, entry_point: (*entry).into() };
        let words = spv::write_vec(&module, &info, &options, Some(&pipeline))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if !validate {
            continue;
        }
        let path = dir.path().join(format!("{}_{entry}.spv", shader.name));
        let words = without_unlaid_out_strides(&words);
        std::fs::write(&path, bytemuck::cast_slice::<u32, u8>(&words)).unwrap();
        let out = Command::new(&validator).args(["--target-env", "vulkan1.3"]).arg(&path).output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
        if said.contains("Invalid capability operand") {
            eprintln!("{validator} predates cooperative matrices: the SPIR-V is not validated ({said})");
            validate = false;
            continue;
        }
        assert!(out.status.success(), "{name}: {validator}: {said}");
    }
}

/// SPIR-V `words` less the ArrayStride decorations of the arrays in workgroup, private and function
/// memory. naga writes them for every array, which SPIRV-Tools from 2025 on refuses
/// (VUID-StandaloneSpirv-None-10684) in every kernel with such arrays, the f32 ones included, and which
/// Vulkan drivers have always taken; without them the validator goes on to check the rest.
fn without_unlaid_out_strides(words: &[u32]) -> Vec<u32> {
    const OP_DECORATE: u32 = 71;
    const OP_TYPE_POINTER: u32 = 32;
    const ARRAY_STRIDE: u32 = 6;
    // The storage classes without explicit layout: Workgroup, Private, Function.
    const UNLAID_OUT: [u32; 3] = [4, 6, 7];
    let instructions = || {
        let mut at = 5;
        std::iter::from_fn(move || {
            let len = (*words.get(at)? >> 16) as usize;
            let instruction = &words[at..at + len.max(1)];
            at += len.max(1);
            Some(instruction)
        })
    };
    let shared: Vec<u32> = instructions()
        .filter(|i| i[0] & 0xffff == OP_TYPE_POINTER && UNLAID_OUT.contains(&i[2]))
        .map(|i| i[3])
        .collect();
    let keep = |i: &&[u32]| !(i[0] & 0xffff == OP_DECORATE && i[2] == ARRAY_STRIDE && shared.contains(&i[1]));
    words[..5].iter().copied().chain(instructions().filter(keep).flatten().copied()).collect()
}
