//! `cargo xtask test`: every test the project has, in one command (the
//! README's test command; `.ci/run` calls it too):
//!
//! 1. `cargo test --workspace`;
//! 2. builds what the JavaScript tests start: `trove` and the Rust SDK's
//!    `producer` example (debug);
//! 3. the TypeScript SDK: `npm ci && npm test` in `sdk/typescript`;
//! 4. the dashboard: `npm ci`, then `npm run check` (types, and the
//!    committed bundle in crates/trove-server/src/dashboard/ is what a
//!    fresh build of dashboard/src gives);
//! 5. the dashboard in headless Chromium: `npm test` in `dashboard`
//!    (screenshots in target/screenshots/).
//!
//! Each step names itself; the first that fails stops the run with its
//! command and exit status, and the exit code is nonzero.
//!
//! Needs: Rust, Node 20 with npm, and Chromium at /usr/bin/chromium (or
//! `CHROMIUM=path`). `--skip-cargo-test` leaves out step 1 (when it just
//! passed).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => {
            let skip_cargo = args[1..].iter().any(|a| a == "--skip-cargo-test");
            if let Some(bad) = args[1..].iter().find(|a| *a != "--skip-cargo-test") {
                eprintln!("xtask test: unknown option `{bad}` (known: --skip-cargo-test)");
                return ExitCode::from(2);
            }
            match test(&root(), skip_cargo) {
                Ok(()) => ExitCode::SUCCESS,
                Err(failure) => {
                    eprintln!("\nxtask test: FAILED: {failure}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!("usage: cargo xtask test [--skip-cargo-test]");
            ExitCode::from(2)
        }
    }
}

/// The repository: this crate is crates/xtask.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// One step's command, run in `dir`.
struct Step<'a> {
    name: &'a str,
    dir: PathBuf,
    program: &'a str,
    args: &'a [&'a str],
    env: Vec<(&'a str, String)>,
}

fn run(step: Step<'_>) -> Result<(), String> {
    let shown = format!("{} {}", step.program, step.args.join(" "));
    println!("\n=== xtask: {} ({shown}, in {})", step.name, step.dir.display());
    let started = Instant::now();
    let mut command = Command::new(step.program);
    command.args(step.args).current_dir(&step.dir);
    // `cargo run` set these for this process, about the xtask package;
    // passed on, they would make a nested cargo rebuild what tracks them
    // (ring's build script tracks CARGO_MANIFEST_DIR), and a plain
    // `cargo build` after it rebuild it again.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let about_xtask = key.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&key.as_ref());
        if about_xtask {
            command.env_remove(key.as_ref());
        }
    }
    for (k, v) in &step.env {
        command.env(k, v);
    }
    let status = command.status().map_err(|e| format!("{}: could not run `{shown}`: {e}", step.name))?;
    if !status.success() {
        let code = status.code().map_or_else(|| "a signal".to_string(), |c| format!("exit status {c}"));
        return Err(format!("{}: `{shown}` in {} ended with {code}", step.name, step.dir.display()));
    }
    println!("=== xtask: {} passed in {:.0} s", step.name, started.elapsed().as_secs_f64());
    Ok(())
}

fn need(program: &str, why: &str) -> Result<(), String> {
    let found = Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success());
    if found { Ok(()) } else { Err(format!("`{program}` is not installed or does not run: {why}")) }
}

fn test(root: &Path, skip_cargo: bool) -> Result<(), String> {
    let started = Instant::now();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let step = |name, dir: &Path, program, args| Step { name, dir: dir.to_path_buf(), program, args, env: Vec::new() };
    if !skip_cargo {
        run(step("the Rust tests", root, &cargo, &["test", "--workspace"]))?;
    }
    run(step("build trove for the JavaScript tests", root, &cargo, &["build", "-p", "trove", "--bin", "trove"]))?;
    run(step("build the producer example", root, &cargo, &["build", "-p", "trove-client", "--example", "producer"]))?;

    need("node", "the TypeScript tests need Node 20 or later (with npm)")?;
    need("npm", "the TypeScript tests need npm (it comes with Node 20)")?;
    let sdk = root.join("sdk/typescript");
    if sdk.join("package.json").exists() {
        run(step("the TypeScript SDK: install (npm ci)", &sdk, "npm", &["ci", "--no-audit", "--no-fund"]))?;
        run(step("the TypeScript SDK's tests", &sdk, "npm", &["test"]))?;
    } else {
        println!("\n=== xtask: no sdk/typescript/package.json: no TypeScript SDK tests to run");
    }

    let dashboard = root.join("dashboard");
    run(step("the dashboard: install (npm ci)", &dashboard, "npm", &["ci", "--no-audit", "--no-fund"]))?;
    run(step("the dashboard: types, and the committed bundle is fresh", &dashboard, "npm", &["run", "check"]))?;
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Err(format!(
            "no Chromium at {chromium}: install it (`apt-get install -y chromium` on Debian) or set CHROMIUM"
        ));
    }
    let screenshots = root.join("target/screenshots");
    let mut browser = step("the dashboard in headless Chromium", &dashboard, "npm", &["test"]);
    browser.env.push(("CHROMIUM", chromium));
    browser.env.push(("TROVE_SCREENSHOTS", screenshots.display().to_string()));
    run(browser)?;
    println!(
        "\nxtask test: every step passed in {:.0} s; the dashboard's screenshots are in {}",
        started.elapsed().as_secs_f64(),
        screenshots.display()
    );
    Ok(())
}
