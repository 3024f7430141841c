//! Broadcast channels for live read-model changes (alerts, stage
//! transitions). The API subscribes to them; the projection runner, once it
//! runs inside `journey serve`, publishes to them with [`LiveFeeds::publish_alert`]
//! and [`LiveFeeds::publish_stage_transition`]. Until then nothing is sent.

use futures::{Stream, StreamExt};
use tokio::sync::broadcast;

use super::read_models::{Alert, StageTransition};

/// How many unsent items a slow subscriber may fall behind before it skips.
const CAPACITY: usize = 1_024;

/// The senders of both feeds; cheap to clone.
#[derive(Clone)]
pub struct LiveFeeds {
    alerts: broadcast::Sender<Alert>,
    stages: broadcast::Sender<StageTransition>,
}

impl Default for LiveFeeds {
    fn default() -> Self {
        Self {
            alerts: broadcast::channel(CAPACITY).0,
            stages: broadcast::channel(CAPACITY).0,
        }
    }
}

impl LiveFeeds {
    /// Sends an alert to every current subscriber.
    pub fn publish_alert(&self, alert: Alert) {
        let _ = self.alerts.send(alert);
    }

    /// Sends a stage transition to every current subscriber.
    pub fn publish_stage_transition(&self, transition: StageTransition) {
        let _ = self.stages.send(transition);
    }

    /// Alerts raised from now on.
    pub fn alerts(&self) -> impl Stream<Item = Alert> + Send + 'static {
        broadcast_stream(self.alerts.subscribe())
    }

    /// Stage transitions from now on.
    pub fn stage_transitions(&self) -> impl Stream<Item = StageTransition> + Send + 'static {
        broadcast_stream(self.stages.subscribe())
    }
}

/// A receiver as a stream that skips what a lagging subscriber missed.
fn broadcast_stream<T: Clone + Send + 'static>(
    mut rx: broadcast::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    async_stream::stream! {
        loop {
            match rx.recv().await {
                Ok(item) => yield item,
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::warn!(skipped, "live subscriber fell behind; items skipped");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }
    .boxed()
}
