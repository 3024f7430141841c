//! The checked-in SDL (`schema/schema.graphql`) must match the code, so
//! clients and reviewers see every API change in the diff.

#[test]
fn checked_in_sdl_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/schema.graphql");
    let generated = journey_ledger::api::schema::sdl();
    if std::env::var_os("JOURNEY_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).expect("write schema/schema.graphql");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "schema/schema.graphql is out of date with the code.\n\
         Review the API change, then update it with:\n\
         JOURNEY_UPDATE_SCHEMA=1 cargo test --test api_schema"
    );
}
