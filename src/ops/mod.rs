//! The model's operations, one file each: GPU launchers for forward and backward (WGSL in `shaders/`)
//! next to a plain-Rust f64 reference that the tests hold them to.

/// Both builds of a [`ReducingShader`](crate::gpu::ReducingShader) from `shaders/<file>`, named `name`
/// and `name+subgroups`.
macro_rules! reducing_shader {
    ($name:literal, $file:literal) => {
        reducing_shader!($name, $file, &[])
    };
    ($name:literal, $file:literal, $consts:expr) => {
        $crate::gpu::ReducingShader {
            tree: $crate::gpu::Shader::new(
                $name,
                concat!(
                    include_str!("../../shaders/group_reduce_tree.wgsl"),
                    include_str!(concat!("../../shaders/", $file))
                ),
            )
            .with_consts($consts),
            subgroups: $crate::gpu::Shader::new(
                concat!($name, "+subgroups"),
                concat!(
                    include_str!("../../shaders/group_reduce_subgroups.wgsl"),
                    include_str!(concat!("../../shaders/", $file))
                ),
            )
            .with_consts($consts),
        }
    };
}

pub mod activation;
pub mod adamw;
pub mod attention;
pub mod cell_update;
pub mod conv;
pub mod cross_entropy;
pub mod decode;
pub mod embedding;
pub mod loss_scale;
pub mod matmul;
pub mod reduce;
pub mod rmsnorm;
pub mod rope;
#[cfg(test)]
mod spirv_check;
pub mod swiglu;
pub mod testing;
pub mod tokens;

use crate::gpu::Shader;

/// Matrices `[rows, width]` side by side: one `[rows, parts.len() * width]`, as one product with the
/// weights stacked writes them (the queries, keys and values of [`attention`]; SwiGLU's gate and up).
pub fn cat_columns<T: Copy>(parts: &[&[T]], width: usize) -> Vec<T> {
    let rows = parts.first().map_or(0, |p| p.len() / width.max(1));
    (0..rows).flat_map(|r| parts.iter().flat_map(move |p| &p[r * width..][..width])).copied().collect()
}

/// The `parts` matrices `[rows, width]` side by side in `x` `[rows, parts * width]`, apart again.
pub fn split_columns<T: Copy>(x: &[T], parts: usize, width: usize) -> Vec<Vec<T>> {
    (0..parts)
        .map(|i| x.chunks(parts * width).flat_map(|row| &row[i * width..][..width]).copied().collect())
        .collect()
}

/// Which gradients a backward pass adds to rather than overwrites.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accumulate {
    /// dx += ...: the gradient of a residual stream gathers its branches' in one pass.
    pub dx: bool,
    /// dw += ...: micro-batches' weight gradients add up.
    pub dw: bool,
}

impl Accumulate {
    /// Bits of [`Accumulate::flags`], prepended to the shaders that read them.
    const DW: u32 = 1;
    const DX: u32 = 2;

    /// The flags as the shaders read them.
    fn flags(self) -> u32 {
        (u32::from(self.dw) * Self::DW) | (u32::from(self.dx) * Self::DX)
    }
}

/// Op shaders outside the variant tables of matmul and attention.
const SHADERS: &[Shader] = &[
    activation::SHADER,
    adamw::SHADER,
    cell_update::SHADER,
    conv::SHADER,
    cross_entropy::SHADER.tree,
    cross_entropy::SHADER.subgroups,
    decode::SHADER.tree,
    decode::SHADER.subgroups,
    embedding::SHADER,
    loss_scale::SHADER,
    reduce::SHADER.tree,
    reduce::SHADER.subgroups,
    rmsnorm::SHADER.tree,
    rmsnorm::SHADER.subgroups,
    rope::SHADER,
    swiglu::SHADER,
    tokens::SHADER,
];

/// The tunable kernel variants `gpu` cannot run, each as `op variant why` (e.g. a variant that binds
/// more storage buffers than the device allows); the op's other variants run instead.
pub fn variants_left_out(gpu: &crate::Gpu) -> Vec<String> {
    let matmul = matmul::VARIANTS.left_out(gpu).into_iter().map(|v| format!("matmul {v}"));
    matmul.chain(attention::BLOCKINGS.left_out(gpu).into_iter().map(|v| format!("attention {v}"))).collect()
}

/// Every op shader, for validation.
pub fn shaders() -> impl Iterator<Item = &'static Shader> {
    SHADERS.iter().chain(matmul::VARIANTS.shaders()).chain(attention::BLOCKINGS.shaders())
}

#[cfg(test)]
mod tests {
    use crate::gpu::{layout_differences, uniform_layout, validate_wgsl, StructLayout};

    #[test]
    fn every_op_shader_validates() {
        for s in super::shaders() {
            validate_wgsl(s.name, &s.full_source()).unwrap();
        }
    }

    #[test]
    fn every_params_struct_matches_its_shader() {
        use super::*;
        let single = |s: &Shader| vec![s.full_source()];
        let reducing = |s: &crate::gpu::ReducingShader| vec![s.tree.full_source(), s.subgroups.full_source()];
        let nca_spec = crate::nca::spec::NcaSpec::default();
        let nca: Vec<String> = crate::nca::gpu::Variant::all()
            .into_iter()
            .map(|v| crate::nca::gpu::variant_source(&nca_spec, v, 64))
            .collect();
        let ops: Vec<(&str, Vec<String>, StructLayout)> = vec![
            ("activation", single(&activation::SHADER), activation::params_layout()),
            ("adamw", single(&adamw::SHADER), adamw::params_layout()),
            (
                "attention",
                attention::BLOCKINGS.shaders().map(Shader::full_source).collect(),
                attention::params_layout(),
            ),
            ("cell_update", single(&cell_update::SHADER), cell_update::params_layout()),
            ("conv", single(&conv::SHADER), conv::params_layout()),
            ("cross_entropy", reducing(&cross_entropy::SHADER), cross_entropy::params_layout()),
            ("decode", reducing(&decode::SHADER), decode::params_layout()),
            ("embedding", single(&embedding::SHADER), embedding::params_layout()),
            ("loss_scale", single(&loss_scale::SHADER), loss_scale::params_layout()),
            (
                "matmul",
                matmul::VARIANTS.shaders().map(Shader::full_source).collect(),
                matmul::params_layout(),
            ),
            ("reduce", reducing(&reduce::SHADER), reduce::params_layout()),
            ("rmsnorm", reducing(&rmsnorm::SHADER), rmsnorm::params_layout()),
            ("rope", single(&rope::SHADER), rope::params_layout()),
            ("swiglu", single(&swiglu::SHADER), swiglu::params_layout()),
            ("tokens", single(&tokens::SHADER), tokens::params_layout()),
            ("nca", nca, crate::nca::gpu::params_layout()),
        ];
        let mut differences = Vec::new();
        let mut checked = 0;
        for (op, sources, host) in &ops {
            for source in sources {
                let (module, _) = validate_wgsl(op, source).unwrap();
                let shader = uniform_layout(&module).unwrap_or_else(|e| panic!("{op}: {e}"));
                differences.extend(layout_differences(&format!("{op} Params"), host, &shader));
                checked += 1;
            }
        }
        assert!(differences.is_empty(), "Rust and WGSL disagree:\n{}", differences.join("\n"));
        // Every op shader of the registry, and every NCA kernel variant, was held to its struct.
        assert_eq!(checked, super::shaders().count() + crate::nca::gpu::Variant::all().len());
    }
}
