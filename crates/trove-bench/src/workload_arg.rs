//! `--workload NAME|FILE`.

use std::io::Read;

use trove_workload::WorkloadSpec;

use crate::error::Error;

/// Workload files are small; a larger one is a mistake (or hostile).
const WORKLOAD_FILE_BYTES_MAX: u64 = 1 << 20;

/// Resolves a built-in workload name (`WorkloadSpec::BUILTIN_NAMES`) or a
/// TOML file path.
pub fn resolve(arg: &str) -> Result<WorkloadSpec, Error> {
    resolve_text(arg).map_err(Error::Workload)
}

fn resolve_text(arg: &str) -> Result<WorkloadSpec, String> {
    if let Some(spec) = WorkloadSpec::builtin(arg) {
        return Ok(spec);
    }
    let file = std::fs::File::open(arg).map_err(|e| {
        let names = WorkloadSpec::BUILTIN_NAMES.join(", ");
        format!("workload `{arg}` is neither a built-in name ({names}) nor a readable file: {e}")
    })?;
    let mut text = String::new();
    file.take(WORKLOAD_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("reading workload file {arg}: {e}"))?;
    if text.len() as u64 > WORKLOAD_FILE_BYTES_MAX {
        return Err(format!("workload file {arg} is larger than {WORKLOAD_FILE_BYTES_MAX} bytes"));
    }
    WorkloadSpec::from_toml(&text).map_err(|e| format!("{arg}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_names_resolve_and_others_are_files() {
        for name in ["standard", "hot", "join-storm"] {
            assert_eq!(resolve(name).unwrap().name, name);
        }
        assert!(resolve("hot").unwrap().hunt_zipf > 0.0);
        assert!(resolve("join-storm").unwrap().storm.is_some());
        let e = resolve("/no/such/workload.toml").unwrap_err();
        assert!(matches!(e, Error::Workload(_)), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("/no/such/workload.toml") && e.contains("(standard, hot, join-storm)"), "{e}");
    }
}
