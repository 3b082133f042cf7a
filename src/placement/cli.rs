//! `credwatch place ADDR...`: where addresses are, by AWS's published IP ranges
//! (<https://docs.aws.amazon.com/vpc/latest/userguide/aws-ip-ranges.html>).
//!
//! Output, tab-separated: a header line `# ranges <source> createDate <time> syncToken <token>`,
//! then `ADDR PLACE SERVICE REGION PREFIX` per address (`-` where there is none). An argument that
//! is not an address gets a message on standard error (the others are still placed) and the exit
//! status is 2. Offline: uses `--ip-ranges`, else `[placement] ip_ranges_file`, else the bundled
//! snapshot; `ip_ranges_url` is not fetched.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use super::{IpRanges, Place, RangesError};
use crate::cli::{EXIT_ERROR, EXIT_OK};
use crate::config::Config;

/// `credwatch place`.
#[derive(Debug, clap::Args)]
pub struct PlaceArgs {
    /// Configuration file (TOML): its `[placement] ip_ranges_file` is used.
    #[arg(long, env = "CREDWATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// An `ip-ranges.json` (or `.json.gz`) to use instead of the configured file or the bundled
    /// snapshot.
    #[arg(long, value_name = "FILE")]
    pub ip_ranges: Option<PathBuf>,
    /// IPv4 or IPv6 addresses.
    #[arg(required = true, value_name = "ADDR")]
    pub addrs: Vec<String>,
}

/// Runs `credwatch place`; returns the exit status.
pub fn cli(args: PlaceArgs) -> i32 {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let code = run(&args, &mut out, &mut stderr.lock());
    if out.flush().is_err() {
        eprintln!("credwatch: place: could not write to stdout");
        return EXIT_ERROR;
    }
    code
}

/// [`cli`] writing to `out` and `err`.
pub fn run(args: &PlaceArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let ranges = match load(args) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "credwatch: place: {e}");
            return EXIT_ERROR;
        }
    };
    let created = ranges
        .create_date()
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map_or_else(
            || "-".to_string(),
            |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        );
    let token = match ranges.sync_token() {
        "" => "-",
        t => t,
    };
    let mut code = EXIT_OK;
    let mut res = writeln!(
        out,
        "# ranges\t{}\tcreateDate\t{created}\tsyncToken\t{token}",
        ranges.source()
    );
    for raw in &args.addrs {
        let Ok(addr) = raw.trim().parse::<IpAddr>() else {
            let _ = writeln!(
                err,
                "credwatch: place: {raw:?} is not an IPv4 or IPv6 address"
            );
            code = EXIT_ERROR;
            continue;
        };
        let place = ranges.place(addr);
        res = res.and_then(|_| match place {
            Place::Aws(r) => writeln!(
                out,
                "{addr}\t{}\t{}\t{}\t{}",
                place.as_str(),
                r.service,
                r.region,
                r.prefix
            ),
            _ => writeln!(out, "{addr}\t{}\t-\t-\t-", place.as_str()),
        });
    }
    if res.is_err() {
        let _ = writeln!(err, "credwatch: place: could not write the output");
        return EXIT_ERROR;
    }
    code
}

fn load(args: &PlaceArgs) -> Result<std::sync::Arc<IpRanges>, RangesError> {
    if let Some(path) = &args.ip_ranges {
        return IpRanges::from_file(path).map(std::sync::Arc::new);
    }
    let cfg =
        Config::load(args.config.as_deref()).map_err(|e| RangesError(format!("config: {e}")))?;
    match &cfg.placement.ip_ranges_file {
        Some(path) => IpRanges::from_file(path).map(std::sync::Arc::new),
        None => Ok(IpRanges::bundled()),
    }
}
