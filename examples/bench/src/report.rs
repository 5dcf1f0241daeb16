//! Figures, the tables they go in, the machine they were measured on, and
//! the page that holds them all.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use bollard::Docker;
use serde::{Deserialize, Serialize};

/// What every benchmark step returns.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The two middle samples in order (the same one twice for an odd count).
pub fn middle<T: Copy + Ord>(samples: &[T]) -> Option<(T, T)> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    (n > 0).then(|| (sorted[(n - 1) / 2], sorted[n / 2]))
}

/// The median of `samples` (the mean of the two middle ones for an even count).
pub fn median(samples: &[Duration]) -> Duration {
    middle(samples).map_or(Duration::ZERO, |(low, high)| (low + high) / 2)
}

/// A duration for a table: microseconds, milliseconds or seconds.
pub fn secs(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    } else if d < Duration::from_secs(1) {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// The median of `samples`, with every sample when there are several.
pub fn median_of(samples: &[Duration]) -> String {
    let middle = secs(median(samples));
    if samples.len() < 2 {
        return middle;
    }
    let all: Vec<String> = samples.iter().map(|d| secs(*d)).collect();
    format!("{middle} ({})", all.join(", "))
}

/// How many times `ours` fits in `baseline`: above 1 when ours is faster.
pub fn ratio(baseline: Duration, ours: Duration) -> String {
    ratio_of(baseline.as_secs_f64(), ours.as_secs_f64())
}

/// `baseline / ours`, written for a table.
pub fn ratio_of(baseline: f64, ours: f64) -> String {
    if ours <= 0.0 {
        return "-".to_owned();
    }
    let r = baseline / ours;
    if r >= 100.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.2}×")
    }
}

/// A target and whether a figure meets it, for a note under a table.
fn target(what: &str, measured: &str, met: bool) -> String {
    format!("target {what}: {measured}, {}", if met { "met" } else { "**not met**" })
}

/// A target of the project and the figure measured against it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// The engine it was measured on; empty until [`Section::per_engine`] names it.
    engine: String,
    /// The target.
    what: String,
    /// The figure measured.
    measured: String,
    met: bool,
}

/// One benchmark's table, printed row by row as figures come in.
#[derive(Debug, Serialize, Deserialize)]
pub struct Section {
    title: String,
    intro: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
    /// The targets this benchmark measured, gathered in [`targets`].
    targets: Vec<Target>,
}

impl Section {
    /// A table with these columns.
    pub fn new(title: &str, intro: &str, header: &[&str]) -> Self {
        println!("\n== {title}\n   {}", header.join(" | "));
        Self {
            title: title.to_owned(),
            intro: intro.to_owned(),
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
            targets: Vec::new(),
        }
    }

    /// Adds and prints a row.
    pub fn row(&mut self, cells: Vec<String>) {
        println!("   {}", cells.join(" | "));
        self.rows.push(cells);
    }

    /// Adds and prints a remark under the table.
    pub fn note(&mut self, text: &str) {
        println!("   note: {text}");
        self.notes.push(text.to_owned());
    }

    /// Adds and prints, as a note, a target and the figure measured against
    /// it; [`targets`] gathers them.
    pub fn target(&mut self, what: &str, measured: &str, met: bool) {
        self.note(&target(what, measured, met));
        self.targets.push(Target { engine: String::new(), what: what.to_owned(), measured: measured.to_owned(), met });
    }

    /// One table of the same benchmark measured on several engines: each
    /// engine's rows and notes, labelled with the engine, in turn.
    pub fn per_engine(measured: Vec<(String, Section)>) -> Option<Section> {
        let mut measured = measured.into_iter();
        let (label, first) = measured.next()?;
        let mut merged = Section {
            header: std::iter::once("engine".to_owned()).chain(first.header.iter().cloned()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
            targets: Vec::new(),
            title: first.title.clone(),
            intro: first.intro.clone(),
        };
        for (label, section) in std::iter::once((label, first)).chain(measured) {
            merged.rows.extend(section.rows.into_iter().map(|row| std::iter::once(label.clone()).chain(row).collect()));
            merged.notes.extend(section.notes.into_iter().map(|note| format!("{label}: {note}")));
            merged.targets.extend(section.targets.into_iter().map(|t| Target { engine: label.clone(), ..t }));
        }
        Some(merged)
    }

    fn markdown(&self) -> String {
        let mut out = format!("## {}\n\n{}\n\n", self.title, self.intro);
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        out.push_str(&line(&self.header));
        out.push_str(&line(&vec!["---".to_owned(); self.header.len()]));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out.push('\n');
        out
    }
}

/// Every target the sections measured, one row per target and one column
/// per engine (`engines`, in order; a target measured without an engine
/// label goes under the first), printed as it is made; `None` when no
/// section measured a target.
pub fn targets(sections: &[Section], engines: &[String]) -> Option<Section> {
    let measured: Vec<&Target> = sections.iter().flat_map(|s| &s.targets).collect();
    if measured.is_empty() {
        return None;
    }
    let header: Vec<&str> = std::iter::once("target").chain(engines.iter().map(String::as_str)).collect();
    let mut summary = Section::new(
        "Targets, engine by engine",
        "Each target of the load and warm benchmarks below, with the figure measured on each engine of this run.",
        &header,
    );
    let mut whats: Vec<&str> = Vec::new();
    for t in &measured {
        if !whats.contains(&t.what.as_str()) {
            whats.push(&t.what);
        }
    }
    for what in whats {
        let cells = engines.iter().enumerate().map(|(e, engine)| {
            measured
                .iter()
                .find(|t| t.what == what && (t.engine == *engine || (e == 0 && t.engine.is_empty())))
                .map_or_else(
                    || "-".to_owned(),
                    |t| format!("{}, {}", t.measured, if t.met { "met" } else { "**not met**" }),
                )
        });
        summary.row(std::iter::once(what.to_owned()).chain(cells).collect());
    }
    Some(summary)
}

/// The machine a run measured.
#[derive(Debug)]
pub struct Machine {
    cpus: usize,
    cpu_model: String,
    memory: String,
    kernel: String,
    engines: Vec<String>,
}

/// An engine's version and store, as the page's rows name it.
pub async fn engine_label(docker: &Docker) -> Res<String> {
    let version = docker.version().await?.version.unwrap_or_default();
    let info = docker.info().await?;
    let containerd_store = info
        .driver_status
        .unwrap_or_default()
        .iter()
        .any(|pair| pair.iter().any(|v| v.starts_with("io.containerd.snapshotter")));
    let store = if containerd_store { "containerd image store".to_owned() } else { info.driver.unwrap_or_default() };
    Ok(format!("Docker {version} ({store})"))
}

impl Machine {
    /// Reads the host's facts; the engines come from [`engine_label`].
    pub fn describe(engines: Vec<String>) -> Self {
        let proc_field = |file: &str, key: &str| {
            std::fs::read_to_string(file)
                .ok()
                .and_then(|text| {
                    text.lines()
                        .find(|l| l.starts_with(key))
                        .and_then(|l| l.split_once(':'))
                        .map(|(_, v)| v.trim().to_owned())
                })
                .unwrap_or_else(|| "unknown".to_owned())
        };
        let memory_kib: f64 =
            proc_field("/proc/meminfo", "MemTotal").trim_end_matches(" kB").parse().unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: proc_field("/proc/cpuinfo", "model name"),
            memory: format!("{:.1} GiB", memory_kib / 1024.0 / 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
            engines,
        }
    }
}

/// The whole page: sections, then the machine and the command.
pub fn page(sections: &[Section], machine: &Machine, command: &str, took: Duration) -> String {
    let profile = if cfg!(debug_assertions) { "dev (unoptimized)" } else { "release" };
    let mut out = String::from(
        "# Benchmarks\n\n\
         Generated by `scripts/bench.sh` (the `e2e-infra-bench` binary, `examples/bench/`): every figure \
         below comes from one run, each measurement of e2e-infra side by side with the naive way or the \
         CLI pipeline it replaces. Times are medians of the repetitions, with every sample in brackets; \
         ratios are baseline ÷ e2e-infra, so above 1× means e2e-infra is faster. The load and warm \
         benchmarks (1, 2, 4, 7) run on every engine of the run (see Machine), each against the CLI \
         pipeline on that same engine, one row per engine; see [engines](engines.md). Do not edit by hand: \
         run the command at the end again.\n\n",
    );
    for section in sections {
        out.push_str(&section.markdown());
    }
    let _ = write!(
        out,
        "## Machine\n\n\
         | | |\n| --- | --- |\n\
         | CPUs (nproc) | {} × {} |\n| memory | {} |\n| kernel | {} |\n| engines | {} |\n\
         | bench build profile | {profile} |\n| run at | {} |\n| run took | {} |\n\n\
         ## Reproduce\n\n```sh\n{command}\n```\n",
        machine.cpus,
        machine.cpu_model,
        machine.memory,
        machine.kernel,
        machine.engines.join("; "),
        humantime::format_rfc3339_seconds(SystemTime::now()),
        secs(took),
    );
    out
}
