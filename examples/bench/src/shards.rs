//! CI shards on one cluster: 2 and 4 shards of one generated suite, each
//! a "machine" of its own (PID namespace, state root, engine), sharing one
//! stack through the Lease against each shard with a stack of its own.

use std::time::Duration;

use e2e_infra_tests::cluster::Cluster;
use e2e_infra_tests::shards::{setups, ShardRun, ShardSuite};
use e2e_infra_tests::{unique, ENGINE_DIR, ENGINE_DIR_ENV};

use crate::report::{ratio, secs, Res, Section};

/// The engines the shards take turns on: the system's and Docker 29.
fn engines() -> Res<Vec<String>> {
    let folder = std::env::var(ENGINE_DIR_ENV).unwrap_or_else(|_| ENGINE_DIR.to_owned());
    let docker29 = format!("{folder}/docker29/docker.sock");
    if !std::path::Path::new(&docker29).exists() {
        return Err(format!(
            "benchmark 11 runs every other shard on Docker 29 at {docker29}: start it with scripts/engine.sh --all"
        )
        .into());
    }
    Ok(vec![e2e_infra_tests::engine_host(), format!("unix://{docker29}")])
}

/// What one set of shards did.
struct Measured {
    setups: usize,
    wall: Duration,
}

fn measure(runs: &[ShardRun]) -> Res<Measured> {
    for (i, run) in runs.iter().enumerate() {
        if !run.output.status.success() {
            return Err(format!("shard {} failed:\n{}", i + 1, run.text).into());
        }
    }
    Ok(Measured { setups: setups(runs), wall: runs.iter().map(|r| r.wall).max().unwrap_or_default() })
}

/// Benchmark 11.
pub fn shards(tests: usize) -> Res<Section> {
    std::env::var("E2E_CONTAINERD_SOCKET").map_err(|_| {
        "benchmark 11 needs a cluster and its node's containerd: set KUBECONFIG and E2E_CONTAINERD_SOCKET"
    })?;
    let cluster = Cluster::from_env();
    let engines = engines()?;
    let mut section = Section::new(
        "11. CI shards on one cluster",
        &format!(
            "One generated suite of {tests} tests (each reads a page of the run's `web`, a busybox httpd), run as \
             N `cargo nextest run --partition count:i/N` commands at once, each in a PID namespace of its own \
             (`unshare --pid --fork --mount-proc`) with its own state root, the shards taking turns on the system \
             engine and Docker 29, images into the real node's containerd. Shared: one E2E_INFRA_RUN_ID, the shards \
             coordinate through the Lease. Own stacks: a run id per shard. A setup is one build stage, one delivery \
             into the node and one deploy; wall time runs until the last shard's teardown process ended."
        ),
        &[
            "shards",
            "setups (build + load + deploy), shared",
            "own stacks",
            "wall time, shared",
            "own stacks",
            "own / shared",
        ],
    );
    let suite = ShardSuite::new(&format!("bench-shards-{:04x}", std::process::id() % 0xffff), tests);
    for count in [2, 4] {
        let run = unique("bench-shared");
        let shared = measure(&suite.run_shards(&cluster, &vec![run; count], &engines))?;
        let own: Vec<String> = (1..=count).map(|i| unique(&format!("bench-own{i}"))).collect();
        let own = measure(&suite.run_shards(&cluster, &own, &engines))?;
        println!(
            "shards {count}: shared {} setup(s) in {}, own stacks {} setup(s) in {}",
            shared.setups,
            secs(shared.wall),
            own.setups,
            secs(own.wall)
        );
        section.row(vec![
            count.to_string(),
            shared.setups.to_string(),
            own.setups.to_string(),
            secs(shared.wall),
            secs(own.wall),
            ratio(own.wall, shared.wall),
        ]);
    }
    section.note(
        "the images are built from the same inputs every time, so a build after the first on an engine is a \
         cache hit; what sharing saves beyond the builds is the deliveries, the deploys and their readiness waits, \
         and the namespaces on the cluster",
    );
    Ok(section)
}
