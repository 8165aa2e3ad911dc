//! Compile-time behaviour of the derives: every misuse fails with a message a newcomer
//! understands (`<topic>/*.rs` with committed `.stderr`), and correct uses compile without
//! warnings. Refresh the `.stderr` files with `TRYBUILD=overwrite cargo test -p es-ui-tests`.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("event/*.rs");
    cases.compile_fail("aggregate/*.rs");
    cases.compile_fail("command/*.rs");
    cases.pass("pass/*.rs");
}
