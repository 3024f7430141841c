//! # journey-ledger
//!
//! An event-sourced CQRS ledger of customer journeys. Every customer
//! interaction is an immutable, hash-chained event in a per-customer stream
//! ([`domain`], [`store`]); read models are projected from the ordered log.
//!
//! Layout: [`domain`] holds the typed events and their validation; [`store`]
//! the [`store::EventStore`] trait, one module per backend and the contract
//! suite; [`import`] reads CDNOW and JSON-lines files; [`commands`] checks
//! business rules before appending; [`projections`] folds events into read
//! models; [`clv`] values customers; [`audit`] verifies chains and exports
//! histories; [`privacy`] seals and erases personal data; [`api`] serves
//! GraphQL.

pub mod api;
pub mod audit;
pub mod backtest;
pub mod bench;
pub mod clv;
pub mod commands;
pub mod config;
pub mod domain;
pub mod import;
pub mod privacy;
pub mod projections;
pub mod report;
pub mod store;
#[doc(hidden)]
pub mod testing;
