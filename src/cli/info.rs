use anyhow::Result;
use clap::Args;

use crate::{Gpu, GpuOptions};

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let gpu = Gpu::new(&GpuOptions::default())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&gpu.report_json())?);
    } else {
        print!("{}", gpu.report());
    }
    Ok(())
}
