//! How failures become GraphQL errors: a stable `extensions.code` clients
//! can branch on, a `field` for bad input, and no internals (SQL, file
//! paths) in the message — those go to the server log only.

use async_graphql::ErrorExtensions;

use super::read_models::ReadModelError;
use crate::commands::CommandError;

/// An error with a stable `extensions.code` and a message for people.
pub fn coded(code: &'static str, message: impl Into<String>) -> async_graphql::Error {
    async_graphql::Error::new(message.into()).extend_with(|_, e| e.set("code", code))
}

/// Input rejected; `field` is the GraphQL path of the offending value.
pub fn bad_input(field: &str, message: impl Into<String>) -> async_graphql::Error {
    let field = camel_path(field);
    let message = message.into();
    async_graphql::Error::new(format!("{field}: {message}")).extend_with(|_, e| {
        e.set("code", "BAD_USER_INPUT");
        e.set("field", field.as_str());
    })
}

/// A failure whose details must not reach the client.
pub fn internal(error: &dyn std::fmt::Display) -> async_graphql::Error {
    let id = uuid::Uuid::new_v4();
    tracing::error!(%id, %error, "internal error while answering a GraphQL request");
    async_graphql::Error::new(format!(
        "internal error (reference {id}; see the server log)"
    ))
    .extend_with(|_, e| e.set("code", "INTERNAL"))
}

/// Maps a refused command.
pub fn command_error(error: CommandError) -> async_graphql::Error {
    match error {
        CommandError::Invalid(v) => bad_input(&v.field, v.reason),
        CommandError::Conflict {
            customer,
            expected,
            actual,
        } => async_graphql::Error::new(format!(
            "customer {customer} is at version {actual}, not the expected {expected}; \
             re-read and retry"
        ))
        .extend_with(|_, e| {
            e.set("code", "CONCURRENCY_CONFLICT");
            e.set("expectedVersion", expected);
            e.set("actualVersion", actual);
        }),
        CommandError::Unavailable(message) => async_graphql::Error::new(message)
            .extend_with(|_, e| e.set("code", "PRECONDITION_UNAVAILABLE")),
        other => internal(&other),
    }
}

/// Maps a failed read-model query.
pub fn read_error(error: ReadModelError) -> async_graphql::Error {
    match error {
        ReadModelError::Unavailable { .. } => async_graphql::Error::new(error.to_string())
            .extend_with(|_, e| e.set("code", "PRECONDITION_UNAVAILABLE")),
        ReadModelError::BadCursor(_) => bad_input("after", "is not a cursor this API issued"),
        other => internal(&other),
    }
}

/// `input.order_id` → `input.orderId`: domain paths in GraphQL spelling.
pub fn camel_path(path: &str) -> String {
    path.split('.')
        .map(|segment| {
            let mut out = String::with_capacity(segment.len());
            let mut upper = false;
            for c in segment.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    out.extend(c.to_uppercase());
                    upper = false;
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    #[test]
    fn domain_paths_become_graphql_paths() {
        assert_eq!(super::camel_path("input.order_id"), "input.orderId");
        assert_eq!(
            super::camel_path("input.acquisition_cost.minor"),
            "input.acquisitionCost.minor"
        );
        assert_eq!(super::camel_path("customerId"), "customerId");
    }
}
