//! `--workload NAME|FILE`.

use std::io::Read;

use trove_workload::WorkloadSpec;

/// Workload files are small; a larger one is a mistake (or hostile).
const WORKLOAD_FILE_BYTES_MAX: u64 = 1 << 20;

/// Resolves a built-in workload name or a TOML file path.
pub fn resolve(arg: &str) -> Result<WorkloadSpec, String> {
    if arg == "standard" {
        return Ok(WorkloadSpec::standard());
    }
    let file = std::fs::File::open(arg)
        .map_err(|e| format!("workload `{arg}` is neither a built-in name (standard) nor a readable file: {e}"))?;
    let mut text = String::new();
    file.take(WORKLOAD_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("reading workload file {arg}: {e}"))?;
    if text.len() as u64 > WORKLOAD_FILE_BYTES_MAX {
        return Err(format!("workload file {arg} is larger than {WORKLOAD_FILE_BYTES_MAX} bytes"));
    }
    WorkloadSpec::from_toml(&text).map_err(|e| format!("{arg}: {e}"))
}
