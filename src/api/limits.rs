//! Limits that keep one client from exhausting the server: query depth and
//! complexity (checked by async-graphql before execution), page sizes,
//! request body size and a per-request timeout.

use std::time::Duration;

use super::error::bad_input;

/// Deepest selection accepted. GraphiQL's introspection query nests 13
/// levels; the ledger's own types need fewer than 8.
pub const MAX_DEPTH: usize = 15;
/// Most fields (weighted) one operation may select.
pub const MAX_COMPLEXITY: usize = 1_000;
/// Largest page a connection returns.
pub const MAX_PAGE: usize = 100;
/// Largest request body accepted, bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Largest body of a pipeline request (`/v1/*`, `/cloudevents`), bytes
/// after gzip decompression: Segment's own batch limit (500 KB), which its
/// SDKs keep to.
pub const MAX_INGEST_BODY_BYTES: usize = 512 * 1024;
/// Largest single pipeline message, bytes (Segment's per-message limit).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// Longest a query or mutation may run.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks a `first` argument: 1..=[`MAX_PAGE`].
pub fn page_size(argument: &str, first: i32) -> async_graphql::Result<usize> {
    if first < 1 || first as usize > MAX_PAGE {
        return Err(bad_input(
            argument,
            format!("must be between 1 and {MAX_PAGE}, got {first}"),
        ));
    }
    Ok(first as usize)
}
