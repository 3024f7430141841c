//! # journey-ledger
//!
//! An event-sourced CQRS ledger of customer journeys. Every customer
//! interaction is an immutable, hash-chained event in a per-customer stream
//! ([`domain`], [`store`]); read models are projected from the ordered log.
//!
//! Layout: [`domain`] holds the typed events and their validation; [`store`]
//! the [`store::EventStore`] trait, one module per backend and the contract
//! suite; [`import`] reads CDNOW and JSON-lines files; [`commands`] checks
//! business rules before appending; [`api`] serves GraphQL.

pub mod api;
pub mod bench;
pub mod commands;
pub mod config;
pub mod domain;
pub mod import;
pub mod store;
#[doc(hidden)]
pub mod testing;
