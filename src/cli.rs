//! The command line. Every flag can also be set by a `CREDWATCH_…` environment variable.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::decode::Limits;
use crate::engine::Engine;
use crate::hunt;
use crate::rules::RULES;

/// Exit status: the command completed (findings or not).
pub const EXIT_OK: i32 = 0;
/// Exit status: `--fail-on-findings` and there were findings.
pub const EXIT_FINDINGS: i32 = 1;
/// Exit status: an error stopped the command.
pub const EXIT_ERROR: i32 = 2;
/// Exit status: `hunt --escalate` could not deliver every finding (some remain spooled, or a
/// destination rejected them).
pub const EXIT_UNDELIVERED: i32 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "credwatch",
    version,
    about = "Catches stolen AWS temporary credentials while they are being used"
)]
pub struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `credwatch=debug`.
    #[arg(long, global = true, env = "CREDWATCH_LOG", default_value = "warn")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hunt over historical CloudTrail files and folders (recursively).
    Hunt(HuntArgs),
    /// Check a configuration file and print the effective configuration.
    ValidateConfig {
        /// The TOML file to check.
        #[arg(env = "CREDWATCH_CONFIG")]
        file: PathBuf,
    },
    /// Consume a Kinesis data stream fed by a CloudWatch Logs subscription filter, in real time.
    Run(RunArgs),
    /// List the rules with their default severities.
    Rules,
    /// Replay CloudTrail files into CloudWatch Logs (PutLogEvents) or Kinesis (PutRecords).
    Replay(crate::workload::replay::ReplayArgs),
    /// Generate a seeded synthetic CloudTrail workload with its ground truth.
    Generate(crate::workload::generate::GenerateArgs),
    /// Score findings against a generated workload's ground truth.
    Score(crate::workload::score::ScoreArgs),
    /// Where addresses are: AWS (service, region, prefix) or outside, from AWS's published ranges.
    Place(crate::placement::cli::PlaceArgs),
    /// Print what the inventory of our own addresses holds (`[inventory]`), as a table or JSON.
    Inventory(crate::inventory::cli::InventoryArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Configuration file (TOML); the flags below override it.
    #[arg(long, env = "CREDWATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kinesis data stream name (`kinesis.stream`).
    #[arg(long, env = "CREDWATCH_STREAM")]
    pub stream: Option<String>,
    /// `--region` (`kinesis.region`) and `--endpoint-url` (`kinesis.endpoint_url`).
    #[command(flatten)]
    pub aws: AwsArgs,
    /// Findings as JSON lines (`output.findings_file`); default: standard output.
    #[arg(long, env = "CREDWATCH_FINDINGS_OUT")]
    pub findings_out: Option<PathBuf>,
    /// Set-aside records as JSON lines (`output.dead_letter_file`).
    #[arg(long, env = "CREDWATCH_DEAD_LETTER_OUT")]
    pub dead_letter_out: Option<PathBuf>,
    /// Folder for checkpoints and store snapshots (`checkpoint.dir`).
    #[arg(long, env = "CREDWATCH_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Address for /metrics, /livez and /readyz (`metrics.addr`).
    #[arg(long, env = "CREDWATCH_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// This worker's `leaseOwner` name with `[coordination] backend = "dynamodb"`
    /// (`coordination.worker_id`); default: host name and pid.
    #[arg(long, env = "CREDWATCH_WORKER_ID")]
    pub worker_id: Option<String>,
}

/// Where AWS is: shared by the commands that call it (`run`, `replay`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AwsArgs {
    /// AWS region (default: the SDK's chain).
    #[arg(long, env = "CREDWATCH_REGION")]
    pub region: Option<String>,
    /// Endpoint URL, for an emulator (default: AWS's).
    #[arg(long, env = "CREDWATCH_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct HuntArgs {
    /// Configuration file (TOML).
    #[arg(long, env = "CREDWATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// `table` for people, `json` for one finding per line.
    #[arg(long, env = "CREDWATCH_OUTPUT", value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// Exit with status 1 when there are findings.
    #[arg(long, env = "CREDWATCH_FAIL_ON_FINDINGS")]
    pub fail_on_findings: bool,
    /// Send the findings through the config's `[[escalation]]` destinations, by the escalation
    /// spool of the checkpoint folder (the one `run` uses): what was already delivered from that
    /// folder is not sent again. Exits with status 3 when some could not be delivered.
    #[arg(long, env = "CREDWATCH_ESCALATE")]
    pub escalate: bool,
    /// With `--escalate`: print what would be sent to each destination and what it already has;
    /// send nothing, write nothing.
    #[arg(long, env = "CREDWATCH_ESCALATE_DRY_RUN", requires = "escalate")]
    pub dry_run: bool,
    /// With `--escalate`: the checkpoint folder whose escalation spool to use (`checkpoint.dir`).
    #[arg(long, env = "CREDWATCH_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// With `--escalate`: how long to try to deliver before giving up; what is left stays
    /// spooled for the next `run` or `hunt --escalate` on the same folder.
    #[arg(
        long,
        visible_alias = "escalate-timeout",
        env = "CREDWATCH_ESCALATE_TIMEOUT_SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub escalate_timeout_secs: u64,
    /// Threads that read, decode and judge files side by side (default: one per core). Any
    /// number gives the same findings.
    #[arg(long, env = "CREDWATCH_HUNT_THREADS", value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
    /// Judge only events at or after this time (RFC 3339, `2024-08-01T12:00` UTC, or a date);
    /// on S3, only the day folders and files whose names can hold such events are read.
    #[arg(long, env = "CREDWATCH_HUNT_SINCE")]
    pub since: Option<String>,
    /// Judge only events at or before this time (a date means the end of that day).
    #[arg(long, env = "CREDWATCH_HUNT_UNTIL")]
    pub until: Option<String>,
    /// Judge only events of these accounts (`recipientAccountId`); on S3, only their folders.
    #[arg(long, env = "CREDWATCH_HUNT_ACCOUNTS", value_delimiter = ',')]
    pub accounts: Vec<String>,
    /// Judge only events of these regions (`awsRegion`); on S3, only their folders.
    #[arg(long, env = "CREDWATCH_HUNT_REGIONS", value_delimiter = ',')]
    pub regions: Vec<String>,
    /// Region of the S3 bucket(s) (default: the AWS default chain's, else us-east-1).
    #[arg(long, env = "CREDWATCH_S3_REGION")]
    pub s3_region: Option<String>,
    /// An S3-compatible endpoint instead of AWS's (an emulator); path-style addressing.
    #[arg(long, env = "CREDWATCH_S3_ENDPOINT_URL")]
    pub s3_endpoint_url: Option<String>,
    /// S3 requests in flight (LIST while listing, GET while hunting); also how many objects are
    /// fetched ahead of the decode threads.
    #[arg(long, env = "CREDWATCH_S3_CONCURRENCY", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub s3_concurrency: u64,
    /// Attempts per S3 request, the first included (throttling such as 503 SlowDown and
    /// transient errors are retried with exponential backoff).
    #[arg(long, env = "CREDWATCH_S3_MAX_ATTEMPTS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub s3_max_attempts: u32,
    /// Progress on stderr: a bar on a terminal, plain lines otherwise (`auto`), or as asked.
    #[arg(long, env = "CREDWATCH_PROGRESS", value_enum, default_value = "auto")]
    pub progress: hunt::ProgressMode,
    /// Seconds between progress lines (when not a bar).
    #[arg(long, env = "CREDWATCH_PROGRESS_EVERY", default_value_t = 10.0)]
    pub progress_every: f64,
    /// Files, folders and `s3://bucket/prefix` URLs, mixed as you like: CloudTrail S3 objects
    /// (.json/.json.gz), JSON arrays, EventBridge events, JSON lines, CloudWatch Logs
    /// subscription envelopes.
    #[arg(required = true, env = "CREDWATCH_PATHS", value_delimiter = ',')]
    pub paths: Vec<String>,
}

/// Runs the parsed command; returns the process exit status.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Hunt(args) => hunt_cmd(args),
        Command::ValidateConfig { file } => match Config::load(Some(&file)) {
            Ok(cfg) => {
                match toml::to_string_pretty(&cfg) {
                    Ok(text) => println!("{text}"),
                    Err(e) => eprintln!("credwatch: {e}"),
                }
                eprintln!("{}: ok", file.display());
                EXIT_OK
            }
            Err(e) => {
                eprintln!("credwatch: {}: {e}", file.display());
                EXIT_ERROR
            }
        },
        Command::Run(args) => run_cmd(args),
        Command::Rules => {
            for r in RULES {
                println!("{:<30} {:<8} {}", r.id, r.severity.as_str(), r.description);
            }
            EXIT_OK
        }
        Command::Replay(args) => crate::workload::replay::cli(args),
        Command::Generate(args) => crate::workload::generate::cli(args),
        Command::Score(args) => crate::workload::score::cli(args),
        Command::Place(args) => crate::placement::cli::cli(args),
        Command::Inventory(args) => crate::inventory::cli::cli(args),
    }
}

fn hunt_cmd(args: HuntArgs) -> i32 {
    let mut cfg = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("credwatch: config: {e}");
            return EXIT_ERROR;
        }
    };
    if let Some(d) = &args.checkpoint_dir {
        cfg.checkpoint.dir = d.clone();
    }
    if args.escalate && cfg.escalation.is_empty() {
        eprintln!(
            "credwatch: hunt --escalate: the configuration has no [[escalation]] destination{}",
            if args.config.is_none() {
                " (no --config given)"
            } else {
                ""
            }
        );
        return EXIT_ERROR;
    }
    if !(args.progress_every.is_finite() && args.progress_every > 0.0) {
        eprintln!(
            "credwatch: hunt: --progress-every must be a positive number of seconds, not {}",
            args.progress_every
        );
        return EXIT_ERROR;
    }
    let selection = match hunt_selection(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("credwatch: hunt: {e}");
            return EXIT_ERROR;
        }
    };
    let (objects, mut fetcher) = match hunt_sources(&args, &selection) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("credwatch: {e}");
            return EXIT_ERROR;
        }
    };
    let knowledge = match crate::app::Knowledge::load_blocking(&cfg) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("credwatch: {e:#}");
            return EXIT_ERROR;
        }
    };
    let engine = knowledge.equip(Engine::new(&cfg));
    let limits = Limits::from(&cfg.input);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_failed = false;
    // Kept for `--escalate`.
    let mut found: Vec<crate::finding::Finding> = Vec::new();
    if args.output == OutputFormat::Table {
        let _ = writeln!(
            out,
            "{:<8} {:<28} {:<48} ORIGINS",
            "SEVERITY", "RULE", "SESSION"
        );
    }
    let threads = args
        .threads
        .map_or_else(hunt::default_threads, |n| n as usize);
    if !objects.iter().any(|o| matches!(o, hunt::Object::S3(_))) {
        // Local files only: reading ahead by two per thread keeps the disk busy; more would
        // only hold memory.
        fetcher.read_ahead = threads * 2;
    }
    let started = std::time::Instant::now();
    let progress = hunt::Progress::new(
        objects.len() as u64,
        objects.iter().map(hunt::Object::size).sum(),
    );
    let opts = hunt::HuntOptions {
        limits,
        threads,
        selection: &selection,
        progress: Some(&progress),
    };
    let done = hunt::progress::Stop::default();
    let every = std::time::Duration::from_secs_f64(args.progress_every.clamp(0.05, 86_400.0));
    let summary = std::thread::scope(|scope| {
        scope.spawn(|| hunt::progress::report(&progress, args.progress, every, &done));
        let summary = hunt::hunt_objects(
            &engine,
            &objects,
            &fetcher,
            &opts,
            |f| {
                let res = match args.output {
                    OutputFormat::Json => serde_json::to_string(f)
                        .map_err(std::io::Error::other)
                        .and_then(|line| writeln!(out, "{line}")),
                    OutputFormat::Table => writeln!(out, "{}", f.summary_line()),
                };
                write_failed |= res.is_err();
                if args.escalate {
                    found.push(f.clone());
                }
            },
            |b| tracing::warn!(kind = b.kind.as_str(), position = %b.position, detail = %b.detail, "bad record set aside"),
        );
        done.stop();
        summary
    });
    write_failed |= out.flush().is_err();
    eprint!("{}", summary.render());
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "elapsed: {secs:.2} s, {:.0} events/s, {threads} thread{}",
        summary.events as f64 / secs.max(1e-9),
        if threads == 1 { "" } else { "s" }
    );
    if write_failed {
        eprintln!("credwatch: could not write findings to stdout");
        return EXIT_ERROR;
    }
    if args.escalate {
        let status = escalate_hunt(&cfg, &found, &args);
        if status != EXIT_OK {
            return status;
        }
    }
    if args.fail_on_findings && summary.total_findings() > 0 {
        return EXIT_FINDINGS;
    }
    EXIT_OK
}

/// `--since`, `--until`, `--accounts`, `--regions`, checked.
fn hunt_selection(args: &HuntArgs) -> Result<hunt::Selection, String> {
    let time = |opt: &str, v: &Option<String>, end: bool| {
        v.as_deref()
            .map(|t| hunt::select::parse_time_arg(t, end).map_err(|e| format!("{opt}: {e}")))
            .transpose()
    };
    let sel = hunt::Selection {
        since: time("--since", &args.since, false)?,
        until: time("--until", &args.until, true)?,
        accounts: args.accounts.clone(),
        regions: args.regions.clone(),
    };
    sel.check()?;
    Ok(sel)
}

/// The objects of a hunt, in the order given (each folder in path order, each S3 URL in key
/// order), and the fetcher for them. S3 URLs are listed here: an error names the bucket.
fn hunt_sources(
    args: &HuntArgs,
    selection: &hunt::Selection,
) -> Result<(Vec<hunt::Object>, hunt::Fetcher), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let concurrency = args.s3_concurrency as usize;
    let mut client = None;
    let mut objects = Vec::new();
    for input in &args.paths {
        match hunt::s3::S3Url::parse(input) {
            Some(url) => {
                let url = url?;
                let c = client.get_or_insert_with(|| {
                    runtime.block_on(hunt::s3::client(&hunt::s3::S3Options {
                        region: args.s3_region.clone(),
                        endpoint_url: args.s3_endpoint_url.clone(),
                        max_attempts: args.s3_max_attempts,
                    }))
                });
                let started = std::time::Instant::now();
                let (found, lists) =
                    runtime.block_on(hunt::s3::list(c, &url, selection, concurrency))?;
                tracing::info!(
                    url = %input,
                    objects = found.len(),
                    lists,
                    secs = started.elapsed().as_secs_f64(),
                    "listed"
                );
                eprintln!(
                    "{input}: {} objects to read ({} LIST calls)",
                    found.len(),
                    lists
                );
                objects.extend(found.into_iter().map(hunt::Object::S3));
            }
            None => {
                let files = hunt::collect_files(&[PathBuf::from(input)])?;
                objects.extend(files.into_iter().map(hunt::Object::local));
            }
        }
    }
    Ok((
        objects,
        hunt::Fetcher::with_runtime(runtime, client, concurrency, args.s3_max_attempts),
    ))
}

/// `hunt --escalate` (and `--dry-run`) once the hunt is over: the plan, or the deliveries and
/// what is left.
fn escalate_hunt(cfg: &Config, found: &[crate::finding::Finding], args: &HuntArgs) -> i32 {
    let spool = hunt::escalate::spool_dir(&cfg.checkpoint.dir);
    if args.dry_run {
        return match hunt::escalate::plan(&cfg.escalation, &spool, found) {
            Ok(plans) => {
                eprint!("{}", hunt::escalate::render_plan(&spool, &plans));
                EXIT_OK
            }
            Err(e) => {
                eprintln!(
                    "credwatch: escalation dry run: reading {}: {e}",
                    spool.display()
                );
                EXIT_ERROR
            }
        };
    }
    if let Some(age) = hunt::escalate::checkpoint_age(&cfg.checkpoint.dir) {
        if age.as_secs() < (3 * cfg.checkpoint.interval_secs).max(30) {
            eprintln!(
                "credwatch: warning: {} was written {} s ago: if a `credwatch run` uses this folder,                  both deliver its pending findings (the destinations get some twice)",
                cfg.checkpoint.dir.join(crate::checkpoint::FILE_NAME).display(),
                age.as_secs()
            );
        }
    }
    let Some(rt) = runtime() else {
        return EXIT_ERROR;
    };
    let timeout = std::time::Duration::from_secs(args.escalate_timeout_secs);
    match rt.block_on(hunt::escalate::escalate(
        &cfg.escalation,
        &spool,
        found,
        timeout,
    )) {
        Ok(report) => {
            eprint!("{}", report.render());
            if report.complete() {
                EXIT_OK
            } else {
                EXIT_UNDELIVERED
            }
        }
        Err(e) => {
            eprintln!("credwatch: escalation: {e:#}");
            EXIT_ERROR
        }
    }
}

fn run_cmd(args: RunArgs) -> i32 {
    let mut cfg = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("credwatch: config: {e}");
            return EXIT_ERROR;
        }
    };
    let k = &mut cfg.kinesis;
    k.stream = args.stream.or(k.stream.take());
    k.region = args.aws.region.or(k.region.take());
    k.endpoint_url = args.aws.endpoint_url.or(k.endpoint_url.take());
    if let Some(p) = args.findings_out {
        cfg.output.findings_file = Some(p);
    }
    if let Some(p) = args.dead_letter_out {
        cfg.output.dead_letter_file = Some(p);
    }
    if let Some(d) = args.checkpoint_dir {
        cfg.checkpoint.dir = d;
    }
    if let Some(a) = args.metrics_addr {
        cfg.metrics.addr = a;
    }
    if let Some(w) = args.worker_id {
        cfg.coordination.worker_id = Some(w);
        if let Err(e) = cfg.validate() {
            eprintln!("credwatch: config: {e}");
            return EXIT_ERROR;
        }
    }
    let Some(rt) = crate::cli::runtime() else {
        return EXIT_ERROR;
    };
    match rt.block_on(crate::kinesis::run(cfg)) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("credwatch: {e:#}");
            EXIT_ERROR
        }
    }
}

/// The multi-threaded runtime the async commands run on; `None` (said on stderr) when it cannot
/// start.
pub fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("credwatch: cannot start the runtime: {e}");
            None
        }
    }
}
