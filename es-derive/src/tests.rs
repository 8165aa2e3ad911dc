//! Parser and rule tests on `parse_quote!` input: every error, its count and its text, without
//! going through the compiler.

use syn::{DeriveInput, parse_quote};

use crate::ast::{AggregateStruct, EventEnum};
use crate::check;
use crate::ctxt::Ctxt;

fn event_errors(input: DeriveInput) -> Vec<String> {
    let cx = Ctxt::new();
    if let Some(parsed) = EventEnum::parse(&cx, &input) {
        check::event(&cx, &parsed);
    }
    messages(cx)
}

fn aggregate_errors(input: DeriveInput) -> Vec<String> {
    let cx = Ctxt::new();
    if let Some(parsed) = AggregateStruct::parse(&cx, &input) {
        check::aggregate(&cx, &parsed);
    }
    messages(cx)
}

fn messages(cx: Ctxt) -> Vec<String> {
    match cx.check() {
        Ok(()) => Vec::new(),
        Err(error) => error.into_iter().map(|error| error.to_string()).collect(),
    }
}

#[track_caller]
fn assert_one(errors: &[String], expected: &str) {
    assert_eq!(
        errors.len(),
        1,
        "expected one error containing {expected:?}, got {errors:#?}"
    );
    assert!(
        errors[0].contains(expected),
        "expected {expected:?} in {:?}",
        errors[0]
    );
}

#[test]
fn a_valid_enum_has_no_errors_and_keeps_names_versions_and_steps() {
    let input: DeriveInput = parse_quote! {
        enum OrderEvent {
            #[event(version = 3, upcast(2 = PlacedV2 with upgrade, 1 = PlacedV1), aliases = ["OrderPlaced"])]
            Placed(Placed),
            #[event(name = "OrderShipped")]
            Shipped,
        }
    };
    let cx = Ctxt::new();
    let parsed = EventEnum::parse(&cx, &input).expect("an enum parses");
    check::event(&cx, &parsed);
    cx.check().expect("no errors");
    let placed = &parsed.variants[0];
    assert_eq!((placed.name(), placed.version()), ("Placed".to_owned(), 3));
    assert_eq!(placed.aliases[0].value, "OrderPlaced");
    let steps: Vec<(u32, bool)> = placed
        .steps()
        .iter()
        .map(|s| (s.version.value, s.function.is_some()))
        .collect();
    assert_eq!(steps, [(2, true), (1, false)]);
    assert_eq!(parsed.variants[1].name(), "OrderShipped");
}

#[test]
fn unknown_keys_suggest_the_closest_known_one() {
    let errors = event_errors(parse_quote! { enum E { #[event(verison = 2)] A(A) } });
    assert_one(
        &errors,
        "unknown event attribute `verison`; did you mean `version`?",
    );
    let errors = aggregate_errors(parse_quote! {
        #[aggregate(name = "a", event = E, snapshots_every = 3)]
        struct A;
    });
    assert_one(&errors, "did you mean `snapshot_every`?");
    let errors = event_errors(parse_quote! { enum E { #[event(tag = "x")] A(A) } });
    assert_one(
        &errors,
        "expected one of `name`, `aliases`, `version`, `upcast`, `derive`",
    );
}

#[test]
fn every_mistake_is_reported_at_once() {
    let errors = event_errors(parse_quote! {
        enum E {
            #[event(version = 0, nmae = "x")]
            A(A),
            #[event(name = "")]
            B,
            C(u8, u8),
        }
    });
    assert_eq!(errors.len(), 4, "{errors:#?}");
}

#[test]
fn a_key_given_twice_is_reported_on_the_second() {
    let errors =
        event_errors(parse_quote! { enum E { #[event(name = "x")] #[event(name = "y")] A(A) } });
    assert_one(&errors, "duplicate event attribute `name`");
}

#[test]
fn names_and_aliases_are_unique_across_the_enum() {
    let errors = event_errors(parse_quote! { enum E { A(A), #[event(name = "A")] B(B) } });
    assert_one(
        &errors,
        "duplicate event name `A`: variant `A` is already stored as `A`",
    );
    let errors = event_errors(parse_quote! { enum E { A(A), #[event(aliases = ["A"])] B(B) } });
    assert_one(&errors, "duplicate event name `A`");
    let errors = event_errors(parse_quote! { enum E { #[event(aliases = ["Old", "Old"])] A(A) } });
    assert_one(&errors, "`Old` is given twice for `A`");
}

#[test]
fn upcast_chains_cover_every_older_version_exactly_once() {
    let gap = event_errors(
        parse_quote! { enum E { #[event(version = 4, upcast(1 = V1, 3 = V3))] A(A) } },
    );
    assert_one(&gap, "has a gap: no payload type for version 2");
    let too_long = event_errors(
        parse_quote! { enum E { #[event(version = 2, upcast(1 = V1, 2 = V2))] A(A) } },
    );
    assert_one(
        &too_long,
        "upcast step for version 2 is not older than `A`'s current version 2",
    );
    let missing_end =
        event_errors(parse_quote! { enum E { #[event(version = 3, upcast(1 = V1))] A(A) } });
    assert_one(&missing_end, "missing upcast step for version 2");
    let missing_start =
        event_errors(parse_quote! { enum E { #[event(version = 3, upcast(2 = V2))] A(A) } });
    assert_one(&missing_start, "missing upcast step for version 1");
    let twice = event_errors(
        parse_quote! { enum E { #[event(version = 2, upcast(1 = V1, 1 = W1))] A(A) } },
    );
    assert_one(&twice, "upcast step for version 1 is given twice");
    let none = event_errors(parse_quote! { enum E { #[event(version = 2)] A(A) } });
    assert_one(&none, "is at version 2 but declares no upcast steps");
    let empty = event_errors(parse_quote! { enum E { #[event(version = 2, upcast())] A(A) } });
    assert_one(&empty, "lists no steps");
    let zero = event_errors(
        parse_quote! { enum E { #[event(version = 2, upcast(0 = V0, 1 = V1))] A(A) } },
    );
    assert_one(&zero, "there is no version 0 to upcast from");
}

#[test]
fn malformed_upcast_steps_are_syntax_errors() {
    let errors = event_errors(parse_quote! { enum E { #[event(version = 2, upcast(V1))] A(A) } });
    assert_one(&errors, "expected an upcast step `VERSION = PayloadType`");
}

#[test]
fn variants_hold_one_payload_named_fields_or_nothing() {
    let input: DeriveInput = parse_quote! {
        enum E {
            #[event(version = 2, upcast(1 = AV1), derive(Eq, Hash))]
            A { x: u8, #[serde(default)] y: String },
        }
    };
    let cx = Ctxt::new();
    let parsed = EventEnum::parse(&cx, &input).expect("an enum parses");
    check::event(&cx, &parsed);
    cx.check()
        .expect("a struct variant with history and derives is valid");
    assert!(
        matches!(parsed.variants[0].shape, crate::ast::Shape::Struct(fields) if fields.named.len() == 2)
    );
    assert_eq!(
        parsed.variants[0].derives.as_ref().map(|(_, d)| d.len()),
        Some(2)
    );

    let empty = event_errors(parse_quote! { enum E { A {} } });
    assert_one(
        &empty,
        "`A {}` has no fields: write `A` for an event without data",
    );
    let several = event_errors(parse_quote! { enum E { A(u8, u8) } });
    assert_one(
        &several,
        "an event holds one payload type, not several unnamed fields",
    );
    let derive_on_newtype = event_errors(parse_quote! { enum E { #[event(derive(Eq))] A(P) } });
    assert_one(
        &derive_on_newtype,
        "`A` holds `P`, so put the derives on that type",
    );
    let on_field = event_errors(parse_quote! { enum E { A { #[event(name = "x")] x: u8 } } });
    assert_one(
        &on_field,
        "event attributes go on the variant, not on a field",
    );
    let unit_upcast =
        event_errors(parse_quote! { enum E { #[event(version = 2, upcast(1 = V1))] A } });
    assert_one(&unit_upcast, "`A` carries no data");
    let shared = event_errors(parse_quote! { enum E { A(P), B(P) } });
    assert_one(&shared, "`P` is already the payload of `A`");
}

#[test]
fn the_enum_shape_is_checked() {
    assert_one(
        &event_errors(parse_quote! { struct E; }),
        "`#[derive(Event)]` goes on an enum",
    );
    assert_one(
        &event_errors(parse_quote! { enum E {} }),
        "needs at least one variant",
    );
    assert_one(
        &event_errors(parse_quote! { enum E<T> { A(T) } }),
        "cannot be generic",
    );
    assert_one(
        &event_errors(parse_quote! { #[event(version = 2)] enum E { A(A) } }),
        "`#[event(...)]` goes on a variant",
    );
    assert_one(
        &event_errors(parse_quote! { enum E { #[event] A(A) } }),
        "`#[event]` needs arguments",
    );
}

#[test]
fn aggregates_need_a_name_and_an_event_enum() {
    let errors = aggregate_errors(parse_quote! { struct A; });
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].contains("missing `name = \"...\"`")
            && errors[1].contains("missing `event = ...`")
    );
    let errors = aggregate_errors(parse_quote! { #[aggregate(name = " ", event = E)] struct A; });
    assert_one(&errors, "the aggregate name cannot be empty");
    assert_one(
        &aggregate_errors(parse_quote! { enum A {} }),
        "`#[derive(Aggregate)]` goes on the aggregate's state struct",
    );
    assert_one(
        &aggregate_errors(parse_quote! { #[aggregate(name = "a", event = E)] struct A<T>(T); }),
        "cannot be generic",
    );
}

#[test]
fn snapshot_settings_are_checked() {
    let zero = aggregate_errors(
        parse_quote! { #[aggregate(name = "a", event = E, snapshot_every = 0)] struct A; },
    );
    assert_one(&zero, "`snapshot_every` must be 1 or more");
    let orphan = aggregate_errors(
        parse_quote! { #[aggregate(name = "a", event = E, state_version = 2)] struct A; },
    );
    assert_one(
        &orphan,
        "`state_version` is the version of snapshots, but this aggregate takes none",
    );
    let zero_state = aggregate_errors(parse_quote! {
        #[aggregate(name = "a", event = E, snapshot_every = 5, state_version = 0)]
        struct A;
    });
    assert_one(&zero_state, "state versions start at 1");
}

#[test]
fn the_crate_path_is_parsed_and_checked() {
    let errors = event_errors(parse_quote! { #[es(crate = "not a path")] enum E { A(A) } });
    assert_one(&errors, "`crate` takes a path");
    let errors = event_errors(parse_quote! { #[es(krate = "x")] enum E { A(A) } });
    assert_one(
        &errors,
        "unknown es attribute `krate`; did you mean `crate`?",
    );
}

#[test]
fn marker_modules_are_the_enum_name_in_snake_case() {
    let cases = [
        ("OrderEvent", "order_event"),
        ("HTTPEvent", "http_event"),
        ("Event2Kind", "event2_kind"),
        ("E", "e"),
    ];
    for (enum_name, module) in cases {
        let ident = syn::Ident::new(enum_name, proc_macro2::Span::call_site());
        assert_eq!(crate::event::marker_module(&ident).to_string(), module);
    }
}
