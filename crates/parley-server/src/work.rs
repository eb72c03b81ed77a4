//! Background work on resources (a document to fetch): claimed from the store by the job runner
//! and run beside it, by kind.

use parley_domain::{ResourceKind, Timestamp};
use parley_store::{ConversationStore, Resource};
use tokio::task::JoinSet;

use crate::state::AppState;

/// Resource work items running at once in one process.
const MAX_IN_FLIGHT: usize = 4;

/// The resource work this process runs: each item in a task of its own, so a slow download
/// never holds up the conversation jobs.
#[derive(Default)]
pub struct Runner {
    in_flight: JoinSet<()>,
}

impl Runner {
    /// Claims due work, as much as there is room for, and starts it.
    pub async fn claim_due(&mut self, state: &AppState) {
        while self.in_flight.try_join_next().is_some() {}
        let room = MAX_IN_FLIGHT.saturating_sub(self.in_flight.len());
        if room == 0 {
            return;
        }
        let now = Timestamp::now();
        let claimed = match state
            .store
            .claim_resource_work(now, state.settings.lease_from(now), room as u32)
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                state.disk.notice(&e);
                tracing::warn!(error = %e, "claiming resource work failed");
                return;
            }
        };
        for row in claimed {
            let state = state.clone();
            self.in_flight.spawn(async move { run(&state, row).await });
        }
    }

    /// Stops the work in flight. Its leases stay, so after they run out the work is claimed again
    /// (by this process once it restarts, or by another).
    pub async fn stop(mut self) {
        self.in_flight.shutdown().await;
    }
}

async fn run(state: &AppState, row: Resource) {
    match row.kind {
        ResourceKind::Document => crate::document::fetch(state, row).await,
        kind => {
            // Nothing does background work on this kind: drop it rather than claim it forever.
            tracing::warn!(resource.kind = kind.as_str(), resource.row_id = %row.row_id, "no background work for this kind; dropped");
            let mut row = row;
            row.work_at = None;
            row.locked_until = None;
            if let Err(e) = state.store.update_resource(&row).await {
                tracing::warn!(resource.row_id = %row.row_id, error = %e, "dropping resource work failed");
            }
        }
    }
}
