//! The demo's timeline: the TrafficSplit moves web's traffic from v1 to v2
//! and back, one step every `--step` seconds, while web-v1-b keeps failing
//! a share of its requests and the RetryPolicy keeps that from the frontend.

use std::time::{Duration, Instant};

use super::DemoArgs;
use super::load::Stats;
use super::mesh::DemoMesh;
use super::view;

/// One step: the split's weights and what to look for.
pub struct Step {
    pub v1: u32,
    pub v2: u32,
    pub note: &'static str,
}

pub const STEPS: &[Step] = &[
    Step {
        v1: 80,
        v2: 20,
        note: "canary: 20% of web's traffic goes to v2",
    },
    Step {
        v1: 50,
        v2: 50,
        note: "the canary grows: 50/50",
    },
    Step {
        v1: 0,
        v2: 100,
        note: "all traffic on v2: web-v1-a and web-v1-b fall idle",
    },
    Step {
        v1: 100,
        v2: 0,
        note: "rolled back to v1: web-v1-b fails 30% of its requests; retries hide it",
    },
];

impl Step {
    /// The TrafficSplit as the controller's directory holds it.
    pub fn split_yaml(&self) -> String {
        format!(
            "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: web-split, namespace: shop}}\n\
             spec:\n  service: web\n  backends:\n  - {{service: web-v1, weight: {}}}\n  - {{service: web-v2, weight: {}}}\n",
            self.v1, self.v2
        )
    }
}

/// Plays the steps (cycling) until the duration is over or the user stops
/// the demo, redrawing the view every second.
pub async fn play(mesh: &DemoMesh, args: &DemoArgs, stats: &Stats) -> anyhow::Result<()> {
    let start = Instant::now();
    let end = args.duration.map(|d| start + Duration::from_secs(d));
    let step_len = Duration::from_secs(args.step.max(1));
    let mut step = 0;
    let mut step_started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut view = view::View::new(args.plain);
    let interrupted = super::interrupted();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            _ = tick.tick() => {}
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            return Ok(());
        }
        if step_started.elapsed() >= step_len {
            step = (step + 1) % STEPS.len();
            step_started = Instant::now();
            mesh.write("split.yaml", &STEPS[step].split_yaml());
        }
        let total = stats.totals();
        let retries = mesh.metric("frontend", "retry_total", &[]).await;
        let flaky_503 = mesh
            .metric("web-v1-b", "response_total", &["status_code=\"503\""])
            .await;
        view.draw(&view::Frame {
            elapsed: start.elapsed(),
            step: &STEPS[step],
            window: stats.take_window(),
            total: &total,
            retries,
            flaky_503,
        });
    }
}
