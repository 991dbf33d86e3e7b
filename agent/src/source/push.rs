//! The push loop: cluster events in, debounced translations out to a
//! [`TopologySink`].
//!
//! Every event that changes what translation reads marks the state dirty.
//! The first change after a quiet period is pushed at once (one endpoint
//! change reaches the switch in milliseconds); while changes keep coming,
//! a push happens [`PushConfig::debounce`] after the last one (so the
//! rest of a burst, like a Deployment's rollout, becomes one push), but
//! at most [`PushConfig::max_delay`] after the first (so a steady stream
//! cannot starve the switch). A push translates what changed and sends a full
//! sync when the sink's state is unknown (start, a failed push, a switch
//! that restarted, every [`PushConfig::resync_period`]) and otherwise the
//! patch from what the sink holds, if it is not empty. Translation is
//! incremental ([`Translator`]): only the Services touched since the last
//! push are translated again. A failed push is
//! retried with exponential backoff, as a full sync.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::{sleep_until, Instant};

use super::store::{ClusterEvent, ClusterStore, WatchFailure};
use super::{error_chain, InputProblem, SinkError, SourceError, SourceStatus, TopologySink};
use crate::translate::{FullSync, Problem, TopologyPatch, TranslateConfig, Translator};

/// Timing of the push loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// Quiet time after the last change before a push, while changes
    /// come in bursts.
    pub debounce: Duration,
    /// The delay of the first change after a quiet period (at least
    /// `debounce` since the last push): pushed at once, after only this
    /// moment to take the events already queued with it, so one endpoint
    /// change reaches the switch in milliseconds.
    pub first_delay: Duration,
    /// Longest a change waits for a push while changes keep coming.
    pub max_delay: Duration,
    /// A full sync this often, whatever happened (repairs any drift).
    pub resync_period: Duration,
    /// How often the sink is asked whether it lost its state.
    pub sink_check_interval: Duration,
    /// First retry delay after a failed push; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            debounce: Duration::from_millis(20),
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(200),
            resync_period: Duration::from_secs(300),
            sink_check_interval: Duration::from_millis(250),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// What one push sends.
enum Push {
    Full(FullSync),
    Patch(TopologyPatch),
}

/// Runs `op` on the sink on a blocking thread and gives the sink back.
async fn with_sink<S, T>(
    sink: S,
    op: impl FnOnce(&mut S) -> T + Send + 'static,
) -> Result<(S, T), SourceError>
where
    S: TopologySink,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let mut sink = sink;
        let out = op(&mut sink);
        (sink, out)
    })
    .await
    .map_err(SourceError::SinkPanicked)
}

/// Logs the problems that are new since the last translation.
fn log_new_problems(old: &[Problem], new: &[Problem]) {
    let seen: BTreeSet<&Problem> = old.iter().collect();
    for p in new.iter().filter(|p| !seen.contains(p)) {
        tracing::warn!(problem = %p, "object not (fully) applied");
    }
}

/// Logs the input problems that are new.
fn log_new_input_problems(old: &[InputProblem], new: &[InputProblem]) {
    for p in new.iter().filter(|p| !old.contains(p)) {
        tracing::warn!(problem = %p, "input not (fully) read");
    }
}

/// Consumes `events` (the watchers' merged stream) and keeps `sink` in
/// step with their translation until the stream ends; the last change is
/// pushed before returning.
pub async fn run_push_loop<E, S>(
    events: E,
    translate_config: TranslateConfig,
    config: PushConfig,
    sink: S,
) -> Result<(), SourceError>
where
    E: Stream<Item = Result<ClusterEvent, WatchFailure>>,
    S: TopologySink,
{
    let mut events = std::pin::pin!(events);
    let mut sink = Some(sink);
    let mut store = ClusterStore::default();
    let mut status = SourceStatus::default();
    let mut translator = Translator::new(translate_config);
    // The sink holds the translator's last output; else its state is
    // unknown and the next push is a full sync.
    let mut in_sync = false;
    let mut dirty_since: Option<Instant> = None;
    let mut last_change = Instant::now();
    let mut last_push = Instant::now() - config.debounce;
    let mut retry_at: Option<Instant> = None;
    let mut retry_delay = config.retry_min;
    let mut resync_at = Instant::now() + config.resync_period;
    let mut check_at = Instant::now() + config.sink_check_interval;
    let mut stream_ended = false;

    loop {
        let push_at = match (dirty_since, store.all_listed()) {
            (Some(first), true) => {
                let quiet = first.saturating_duration_since(last_push) >= config.debounce;
                let at = match quiet {
                    true => first + config.first_delay,
                    false => (last_change + config.debounce).min(first + config.max_delay),
                };
                Some(retry_at.map_or(at, |r| r.max(at)))
            }
            _ => None,
        };
        if stream_ended && (push_at.is_none() || retry_at.is_some()) {
            return Ok(());
        }
        tokio::select! {
            // Queued events first: a push sees everything that arrived.
            biased;
            item = events.next(), if !stream_ended => match item {
                None => stream_ended = true,
                Some(Ok(ClusterEvent::InputProblems(problems))) => {
                    log_new_input_problems(&status.input_problems, &problems);
                    if status.input_problems != problems {
                        status.input_problems = problems;
                        if let Some(s) = sink.as_mut() {
                            s.report(&status);
                        }
                    }
                }
                Some(Ok(event)) => {
                    if store.apply(event) {
                        let now = Instant::now();
                        dirty_since.get_or_insert(now);
                        last_change = now;
                    }
                    if !status.listed && store.all_listed() {
                        status.listed = true;
                        tracing::info!("every resource listed; pushing to the switch from now on");
                    }
                }
                Some(Err(failure)) => {
                    tracing::warn!(resource = %failure.resource, error = %failure.message,
                        "watch failed; retrying with backoff, the switch keeps its last topology");
                    *status.watch_errors.entry(failure.resource).or_default() += 1;
                    status.last_watch_error = Some(format!("{}: {}", failure.resource, failure.message));
                    if let Some(s) = sink.as_mut() {
                        s.report(&status);
                    }
                }
            },
            _ = sleep_until(push_at.unwrap_or_else(Instant::now)), if push_at.is_some() => {
                let started = Instant::now();
                last_push = started;
                let changes = store.take_changes();
                let patch = translator.update(store.objects(), &changes);
                let topology = translator.topology();
                let translate_us = started.elapsed().as_micros() as u64;
                if status.problems != topology.problems {
                    log_new_problems(&status.problems, &topology.problems);
                    status.problems = topology.problems.clone();
                }
                let services = topology.services.len();
                let push = match in_sync {
                    true => (!patch.is_empty()).then_some(Push::Patch(patch)),
                    false => Some(Push::Full(topology.full_sync())),
                };
                dirty_since = None;
                let Some(push) = push else {
                    if let Some(s) = sink.as_mut() {
                        s.report(&status);
                    }
                    continue;
                };
                let taken = sink.take().expect("the sink is back after every call");
                let (back, result) = with_sink(taken, move |s| match &push {
                    Push::Full(sync) => s.full_sync(sync).map(|()| true),
                    Push::Patch(patch) => s.apply_patch(patch).map(|()| false),
                })
                .await?;
                sink = Some(back);
                match result {
                    Ok(full) => {
                        if full {
                            status.full_syncs += 1;
                        } else {
                            status.patches += 1;
                        }
                        tracing::debug!(full, services, translate_us,
                            took_us = started.elapsed().as_micros() as u64, "pushed");
                        in_sync = true;
                        retry_at = None;
                        retry_delay = config.retry_min;
                    }
                    Err(e) => {
                        let e: SinkError = e;
                        tracing::warn!(error = %error_chain(&e), retry_in_ms = retry_delay.as_millis() as u64,
                            "push to the switch failed; it keeps its last topology");
                        status.sink_errors += 1;
                        status.last_sink_error = Some(error_chain(&e));
                        in_sync = false;
                        dirty_since = Some(Instant::now());
                        retry_at = Some(Instant::now() + retry_delay);
                        retry_delay = (retry_delay * 2).min(config.retry_max);
                    }
                }
                if let Some(s) = sink.as_mut() {
                    s.report(&status);
                }
            },
            _ = sleep_until(resync_at) => {
                resync_at = Instant::now() + config.resync_period;
                if std::mem::take(&mut in_sync) {
                    dirty_since.get_or_insert(Instant::now());
                }
            },
            _ = sleep_until(check_at), if in_sync => {
                check_at = Instant::now() + config.sink_check_interval;
                let taken = sink.take().expect("the sink is back after every call");
                let (back, lost) = with_sink(taken, |s| s.needs_full_sync()).await?;
                sink = Some(back);
                if lost {
                    tracing::info!("the switch lost its topology (restarted?); sending a full sync");
                    in_sync = false;
                    let now = Instant::now();
                    dirty_since = Some(now);
                    last_change = now - config.debounce;
                }
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use k8s_openapi::api::core::v1::{Node, Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::runtime::watcher::Event;
    use podswitch_switch::control::api::ServiceSettings;
    use serde_json::json;
    use tokio::sync::mpsc;

    use super::*;
    use crate::translate::ObjectKind;

    /// What a fake sink was asked to do.
    #[derive(Debug)]
    pub(crate) enum SinkCall {
        Full(FullSync),
        Patch(TopologyPatch),
    }

    /// Records calls into a channel; fails the next `fail` calls; says it
    /// lost its state when `lost` is set.
    pub(crate) struct FakeSink {
        pub calls: mpsc::UnboundedSender<SinkCall>,
        pub fail: Arc<Mutex<usize>>,
        pub lost: Arc<Mutex<bool>>,
        pub status: Arc<Mutex<SourceStatus>>,
    }

    impl FakeSink {
        fn failing(&mut self) -> Result<(), SinkError> {
            let mut fail = self.fail.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err(SinkError::Other("injected failure".into()));
            }
            Ok(())
        }
    }

    impl TopologySink for FakeSink {
        fn full_sync(&mut self, sync: &FullSync) -> Result<(), SinkError> {
            self.failing()?;
            *self.lost.lock().unwrap() = false;
            let _ = self.calls.send(SinkCall::Full(sync.clone()));
            Ok(())
        }
        fn apply_patch(&mut self, patch: &TopologyPatch) -> Result<(), SinkError> {
            self.failing()?;
            let _ = self.calls.send(SinkCall::Patch(patch.clone()));
            Ok(())
        }
        fn needs_full_sync(&mut self) -> bool {
            *self.lost.lock().unwrap()
        }
        fn report(&mut self, status: &SourceStatus) {
            *self.status.lock().unwrap() = status.clone();
        }
    }

    pub(crate) struct Harness {
        pub events: mpsc::UnboundedSender<Result<ClusterEvent, WatchFailure>>,
        pub calls: mpsc::UnboundedReceiver<SinkCall>,
        pub fail: Arc<Mutex<usize>>,
        pub lost: Arc<Mutex<bool>>,
        pub status: Arc<Mutex<SourceStatus>>,
        pub task: tokio::task::JoinHandle<Result<(), SourceError>>,
    }

    pub(crate) fn fake_sink() -> (FakeSink, mpsc::UnboundedReceiver<SinkCall>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            FakeSink {
                calls: tx,
                fail: Arc::default(),
                lost: Arc::default(),
                status: Arc::default(),
            },
            rx,
        )
    }

    pub(crate) fn translate_config() -> TranslateConfig {
        TranslateConfig {
            node_name: "node-1".into(),
            settings: ServiceSettings::default(),
        }
    }

    fn start(config: PushConfig) -> Harness {
        let (events, rx) = mpsc::unbounded_channel();
        let (sink, calls) = fake_sink();
        let (fail, lost, status) = (sink.fail.clone(), sink.lost.clone(), sink.status.clone());
        let stream = tokio_stream_from(rx);
        let task = tokio::spawn(run_push_loop(stream, translate_config(), config, sink));
        Harness {
            events,
            calls,
            fail,
            lost,
            status,
            task,
        }
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: mpsc::UnboundedReceiver<T>,
    ) -> impl Stream<Item = T> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    fn service(name: &str, ip: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]},
        }))
        .unwrap()
    }

    fn listed_empty(h: &Harness) {
        for ev in [
            ClusterEvent::Node(Event::Init),
            ClusterEvent::Node(Event::InitDone),
            ClusterEvent::Pod(Event::<Pod>::Init),
            ClusterEvent::Pod(Event::InitDone),
            ClusterEvent::Service(Event::<Service>::Init),
            ClusterEvent::Service(Event::InitDone),
            ClusterEvent::EndpointSlice(Event::<EndpointSlice>::Init),
        ] {
            h.events.send(Ok(ev)).unwrap();
        }
    }

    fn finish_listing(h: &Harness) {
        h.events
            .send(Ok(ClusterEvent::EndpointSlice(Event::InitDone)))
            .unwrap();
    }

    async fn next_call(h: &mut Harness) -> SinkCall {
        tokio::time::timeout(Duration::from_secs(600), h.calls.recv())
            .await
            .expect("a push within ten minutes")
            .expect("the loop is running")
    }

    /// Lets every ready task run and timers up to `d` fire.
    async fn settle(d: Duration) {
        tokio::time::sleep(d).await;
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_pushed_before_every_resource_is_listed() {
        let mut h = start(PushConfig::default());
        listed_empty(&h);
        h.events
            .send(Ok(ClusterEvent::Service(Event::Apply(service(
                "a",
                "10.96.0.10",
            )))))
            .unwrap();
        settle(Duration::from_secs(10)).await;
        assert!(
            h.calls.try_recv().is_err(),
            "pushed before slices were listed"
        );
        finish_listing(&h);
        let SinkCall::Full(sync) = next_call(&mut h).await else {
            panic!("the first push is a full sync");
        };
        assert_eq!(sync.services.len(), 1);
        settle(Duration::from_millis(1)).await;
        assert!(h.status.lock().unwrap().listed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_after_quiet_is_pushed_at_once_and_the_rest_of_a_burst_after_the_debounce() {
        let config = PushConfig::default();
        let mut h = start(config.clone());
        listed_empty(&h);
        finish_listing(&h);
        assert!(matches!(next_call(&mut h).await, SinkCall::Full(_)));
        settle(config.debounce).await;

        // 5 changes 10 ms apart (each within the 20 ms debounce).
        let first = Instant::now();
        let sender = h.events.clone();
        tokio::spawn(async move {
            for i in 0..5 {
                sender
                    .send(Ok(ClusterEvent::Service(Event::Apply(service(
                        &format!("s{i}"),
                        &format!("10.96.0.{}", 10 + i),
                    )))))
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let SinkCall::Patch(patch) = next_call(&mut h).await else {
            panic!("a patch");
        };
        assert_eq!(patch.upsert.len(), 1, "the first change, at once");
        assert!(
            first.elapsed() <= config.first_delay,
            "{:?}",
            first.elapsed()
        );
        let SinkCall::Patch(patch) = next_call(&mut h).await else {
            panic!("a patch");
        };
        let waited = first.elapsed();
        assert_eq!(patch.upsert.len(), 4, "one push for the rest of the burst");
        assert!(
            waited >= Duration::from_millis(40) + config.debounce
                && waited < Duration::from_millis(100),
            "{waited:?}"
        );
        settle(Duration::from_secs(1)).await;
        assert!(h.calls.try_recv().is_err(), "nothing more");
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_of_changes_is_pushed_within_max_delay() {
        let config = PushConfig::default();
        let mut h = start(config.clone());
        listed_empty(&h);
        finish_listing(&h);
        assert!(matches!(next_call(&mut h).await, SinkCall::Full(_)));
        settle(config.debounce).await;
        let first = Instant::now();
        let sender = h.events.clone();
        tokio::spawn(async move {
            for i in 0..100u32 {
                let ip = format!("10.96.{}.{}", 1 + i / 200, 10 + i % 200);
                let _ = sender.send(Ok(ClusterEvent::Service(Event::Apply(service(
                    &format!("s{i}"),
                    &ip,
                )))));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        // The first at once, then the stream is held at most max_delay.
        assert!(matches!(next_call(&mut h).await, SinkCall::Patch(_)));
        assert!(matches!(next_call(&mut h).await, SinkCall::Patch(_)));
        let waited = first.elapsed();
        let second_change = Duration::from_millis(5);
        assert!(
            waited >= second_change + config.max_delay
                && waited < second_change + config.max_delay + config.debounce,
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_push_is_retried_with_backoff_as_a_full_sync() {
        let config = PushConfig::default();
        let mut h = start(config.clone());
        listed_empty(&h);
        finish_listing(&h);
        assert!(matches!(next_call(&mut h).await, SinkCall::Full(_)));

        *h.fail.lock().unwrap() = 2;
        let sent = Instant::now();
        h.events
            .send(Ok(ClusterEvent::Service(Event::Apply(service(
                "a",
                "10.96.0.10",
            )))))
            .unwrap();
        let SinkCall::Full(sync) = next_call(&mut h).await else {
            panic!("after a failure the sink's state is unknown: full sync");
        };
        assert_eq!(sync.services.len(), 1);
        // debounce, fail, +100 ms, fail, +200 ms, success.
        let waited = sent.elapsed();
        assert!(
            waited >= config.debounce + config.retry_min * 3,
            "{waited:?}"
        );
        let status = h.status.lock().unwrap().clone();
        assert_eq!(status.sink_errors, 2);
        assert!(status
            .last_sink_error
            .as_deref()
            .unwrap()
            .contains("injected"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sink_that_lost_its_state_gets_a_full_sync_and_resync_is_periodic() {
        let config = PushConfig::default();
        let mut h = start(config.clone());
        listed_empty(&h);
        h.events
            .send(Ok(ClusterEvent::Service(Event::Apply(service(
                "a",
                "10.96.0.10",
            )))))
            .unwrap();
        finish_listing(&h);
        assert!(matches!(next_call(&mut h).await, SinkCall::Full(_)));

        // The switch restarted.
        let restarted = Instant::now();
        *h.lost.lock().unwrap() = true;
        let SinkCall::Full(sync) = next_call(&mut h).await else {
            panic!("full sync");
        };
        assert_eq!(sync.services.len(), 1);
        assert!(restarted.elapsed() <= config.sink_check_interval + config.debounce);

        // Nothing changes: a full sync every resync period all the same.
        let SinkCall::Full(_) = next_call(&mut h).await else {
            panic!("full sync");
        };
        assert!(restarted.elapsed() >= config.resync_period - config.sink_check_interval);
    }

    #[tokio::test(start_paused = true)]
    async fn watch_failures_are_reported_and_change_nothing() {
        let mut h = start(PushConfig::default());
        listed_empty(&h);
        finish_listing(&h);
        assert!(matches!(next_call(&mut h).await, SinkCall::Full(_)));
        h.events
            .send(Err(WatchFailure {
                resource: ObjectKind::Service,
                message: "ApiError: boom (500)".into(),
            }))
            .unwrap();
        settle(Duration::from_secs(1)).await;
        assert!(h.calls.try_recv().is_err());
        let status = h.status.lock().unwrap().clone();
        assert_eq!(status.watch_errors[&ObjectKind::Service], 1);
        assert!(status.last_watch_error.unwrap().contains("boom"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_change_is_pushed_when_the_stream_ends() {
        let mut h = start(PushConfig::default());
        listed_empty(&h);
        finish_listing(&h);
        h.events
            .send(Ok(ClusterEvent::Node(Event::Apply(Node::default()))))
            .unwrap();
        let Harness { events, task, .. } = h;
        drop(events);
        task.await.unwrap().unwrap();
        assert!(matches!(h.calls.recv().await, Some(SinkCall::Full(_))));
    }
}
