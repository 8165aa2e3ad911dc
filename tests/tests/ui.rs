//! Compile-time behaviour of the derives: every misuse fails with a message a newcomer
//! understands (`ui/<topic>/*.rs` with committed `.stderr`), and correct uses compile without
//! warnings. Refresh the `.stderr` files with `TRYBUILD=overwrite cargo test --test ui`.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui/event/*.rs");
    cases.compile_fail("ui/aggregate/*.rs");
    cases.compile_fail("ui/command/*.rs");
    cases.pass("ui/pass/*.rs");
}
