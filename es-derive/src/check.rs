//! The rules a derive input must follow beyond attribute syntax, one `check_*` per rule. Each
//! reports under the token that breaks it; together they guarantee the expanders a valid input.

use std::collections::BTreeMap;

use quote::ToTokens;

use crate::ast::{AggregateStruct, EventEnum, EventVariant, Shape};
use crate::ctxt::Ctxt;

pub(crate) fn event(cx: &Ctxt, input: &EventEnum<'_>) {
    check_event_not_generic(cx, input);
    check_has_variants(cx, input);
    for variant in &input.variants {
        check_variant_shape(cx, variant);
        check_derive_only_on_struct_variants(cx, variant);
        check_no_event_attributes_on_fields(cx, variant);
        check_version_not_zero(cx, variant);
        check_unit_has_no_history(cx, variant);
        check_upcast_chain(cx, variant);
    }
    check_unique_names(cx, input);
    check_distinct_payload_types(cx, input);
}

pub(crate) fn aggregate(cx: &Ctxt, input: &AggregateStruct<'_>) {
    check_aggregate_not_generic(cx, input);
    check_aggregate_has_name(cx, input);
    check_aggregate_has_event(cx, input);
    check_snapshot_settings(cx, input);
}

/// An event enum is a closed, concrete set of types: no generic parameters.
fn check_event_not_generic(cx: &Ctxt, input: &EventEnum<'_>) {
    let generics = &input.original.generics;
    if !generics.params.is_empty() {
        cx.error_spanned_by(
            generics,
            "an event enum cannot be generic: every event needs one concrete payload type for its stored schema",
        );
    }
}

/// An event enum has at least one event.
fn check_has_variants(cx: &Ctxt, input: &EventEnum<'_>) {
    if input.variants.is_empty() {
        cx.error_spanned_by(
            &input.original.ident,
            "an event enum needs at least one variant, one per event type",
        );
    }
}

/// A variant holds one payload struct, named fields (a payload struct is generated for them),
/// or nothing.
fn check_variant_shape(cx: &Ctxt, variant: &EventVariant<'_>) {
    let ident = &variant.original.ident;
    match variant.shape {
        Shape::Struct(fields) if fields.named.is_empty() => cx.error_spanned_by(
            fields,
            format!("`{ident} {{}}` has no fields: write `{ident}` for an event without data"),
        ),
        Shape::Other(fields) if fields.is_empty() => cx.error_spanned_by(
            fields,
            format!("`{ident}()` has no payload: write `{ident}` for an event without data, or `{ident}(Payload)`"),
        ),
        Shape::Other(fields) => cx.error_spanned_by(
            fields,
            format!("an event holds one payload type, not several unnamed fields: name the fields, `{ident} {{ field: Type, ... }}`, or wrap them in a struct and write `{ident}(Payload)`"),
        ),
        Shape::Unit | Shape::Newtype(_) | Shape::Struct(_) => {}
    }
}

/// `derive(...)` adds derives to the payload struct generated for a struct variant; other
/// variants have no generated struct to add them to.
fn check_derive_only_on_struct_variants(cx: &Ctxt, variant: &EventVariant<'_>) {
    let Some((key, _)) = &variant.derives else {
        return;
    };
    let ident = &variant.original.ident;
    match variant.shape {
        Shape::Struct(_) => {}
        Shape::Newtype(ty) => cx.error_spanned_by(
            key,
            format!(
                "`derive(...)` applies to the payload struct generated for a struct variant; `{ident}` holds `{}`, so put the derives on that type",
                quote::quote!(#ty).to_string().replace(' ', "")
            ),
        ),
        Shape::Unit | Shape::Other(_) => cx.error_spanned_by(
            key,
            format!("`derive(...)` applies to the payload struct generated for a struct variant, and `{ident}` has no fields"),
        ),
    }
}

/// Event attributes go on the variant; a field's attributes are copied onto the generated
/// payload struct, where `#[event]` and `#[es]` would mean nothing.
fn check_no_event_attributes_on_fields(cx: &Ctxt, variant: &EventVariant<'_>) {
    for field in variant.original.fields.iter() {
        for attr in field
            .attrs
            .iter()
            .filter(|attr| attr.path().is_ident("event") || attr.path().is_ident("es"))
        {
            cx.error_at(
                crate::attr::attr_span(attr),
                "event attributes go on the variant, not on a field; a field takes `#[serde(...)]`, `#[schemars(...)]` and doc comments, which the generated payload struct keeps",
            );
        }
    }
}

/// Versions count from 1.
fn check_version_not_zero(cx: &Ctxt, variant: &EventVariant<'_>) {
    if let Some(version) = variant
        .version
        .as_ref()
        .filter(|version| version.value == 0)
    {
        cx.error_at(
            version.span,
            "event versions start at 1: use `version = 1` (the default) or higher",
        );
    }
}

/// An event without data has nothing to evolve: no versions above 1 and no upcasting.
fn check_unit_has_no_history(cx: &Ctxt, variant: &EventVariant<'_>) {
    if !matches!(variant.shape, Shape::Unit) {
        return;
    }
    let ident = &variant.original.ident;
    let message = format!(
        "`{ident}` carries no data, so it has no payload to version or upcast; give it fields, `{ident} {{ ... }}`, or a payload struct, `{ident}({ident})`, to evolve it"
    );
    if let Some((key, _)) = &variant.upcast {
        cx.error_spanned_by(key, &message);
    } else if let Some(version) = variant.version.as_ref().filter(|version| version.value > 1) {
        cx.error_at(version.span, &message);
    }
}

/// The upcast steps give exactly the payload types of versions 1 to N-1, once each, so every
/// stored version has a path to the current one.
fn check_upcast_chain(cx: &Ctxt, variant: &EventVariant<'_>) {
    if !matches!(variant.shape, Shape::Newtype(_) | Shape::Struct(_)) || !variant.well_formed {
        return;
    }
    let ident = &variant.original.ident;
    let current = variant.version();
    if current == 0 {
        return;
    }
    let Some((key, steps)) = &variant.upcast else {
        if let Some(version) = variant.version.as_ref().filter(|version| version.value > 1) {
            let older = if current == 2 {
                "version 1".to_owned()
            } else {
                format!("versions 1 to {}", current - 1)
            };
            cx.error_at(
                version.span,
                format!(
                    "`{ident}` is at version {current} but declares no upcast steps, so stored {older} could not load; add `upcast(1 = {ident}V1{})` naming the payload type of each older version",
                    if current > 2 { ", ..." } else { "" }
                ),
            );
        }
        return;
    };
    if steps.is_empty() {
        cx.error_spanned_by(
            key,
            "`upcast(...)` lists no steps; write e.g. `upcast(1 = PayloadV1)`",
        );
        return;
    }
    let mut given = BTreeMap::new();
    for step in steps {
        let version = step.version.value;
        if version == 0 {
            cx.error_at(
                step.version.span,
                "event versions start at 1: there is no version 0 to upcast from",
            );
        } else if version >= current {
            cx.error_at(
                step.version.span,
                format!(
                    "upcast step for version {version} is not older than `{ident}`'s current version {current}; raise `version = ...` to {} or remove the step",
                    version + 1
                ),
            );
        } else if given.insert(version, step).is_some() {
            cx.error_at(
                step.version.span,
                format!("upcast step for version {version} is given twice"),
            );
        }
    }
    let (Some(&lowest), Some(&highest)) = (given.keys().next(), given.keys().next_back()) else {
        return;
    };
    for missing in (1..current).filter(|version| !given.contains_key(version)) {
        let message = if missing > lowest && missing < highest {
            format!(
                "the upcast chain of `{ident}` has a gap: no payload type for version {missing}; add `{missing} = {ident}V{missing}`"
            )
        } else {
            format!(
                "missing upcast step for version {missing} of `{ident}`: every version from 1 to {} needs its payload type; add `{missing} = {ident}V{missing}`",
                current - 1
            )
        };
        cx.error_spanned_by(key, message);
    }
}

/// Every name and alias decodes as exactly one event, and none is empty.
fn check_unique_names(cx: &Ctxt, input: &EventEnum<'_>) {
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for variant in &input.variants {
        let ident = variant.original.ident.to_string();
        let name_span = variant
            .name
            .as_ref()
            .map_or_else(|| variant.original.ident.span(), |name| name.span);
        let names = std::iter::once((variant.name(), name_span, "name")).chain(
            variant
                .aliases
                .iter()
                .map(|alias| (alias.value.clone(), alias.span, "alias")),
        );
        for (name, span, kind) in names {
            if name.trim().is_empty() {
                cx.error_at(
                    span,
                    format!("an event {kind} cannot be empty: it is stored with every event"),
                );
                continue;
            }
            match owners.get(&name) {
                Some(owner) if *owner == ident => {
                    cx.error_at(span, format!("`{name}` is given twice for `{ident}`"));
                }
                Some(owner) => cx.error_at(
                    span,
                    format!(
                        "duplicate event name `{name}`: variant `{owner}` is already stored as `{name}`, and a stored event must decode as exactly one variant; choose another `name` or alias"
                    ),
                ),
                None => {
                    owners.insert(name, ident.clone());
                }
            }
        }
    }
}

/// Apply logic is chosen by payload type, so two events cannot share one.
fn check_distinct_payload_types(cx: &Ctxt, input: &EventEnum<'_>) {
    let mut seen: BTreeMap<String, &syn::Ident> = BTreeMap::new();
    for variant in &input.variants {
        let Shape::Newtype(ty) = variant.shape else {
            continue;
        };
        let key = ty.to_token_stream().to_string();
        if let Some(first) = seen.get(&key) {
            cx.error_spanned_by(
                ty,
                format!(
                    "`{}` is already the payload of `{first}`: apply logic is chosen by payload type (`impl Apply<{}>`), so each event needs a payload type of its own",
                    key.replace(' ', ""),
                    key.replace(' ', "")
                ),
            );
        } else {
            seen.insert(key, &variant.original.ident);
        }
    }
}

/// An aggregate is one concrete state type.
fn check_aggregate_not_generic(cx: &Ctxt, input: &AggregateStruct<'_>) {
    let generics = &input.original.generics;
    if !generics.params.is_empty() {
        cx.error_spanned_by(
            generics,
            "an aggregate struct cannot be generic: its stream type and events are fixed",
        );
    }
}

/// The stream type name is given and not empty: it is stored with every event.
fn check_aggregate_has_name(cx: &Ctxt, input: &AggregateStruct<'_>) {
    match &input.name {
        None => cx.error_spanned_by(
            input.attribute_tokens(),
            "missing `name = \"...\"` in `#[aggregate(...)]`: the aggregate's stable stream type, stored with every event, e.g. `#[aggregate(name = \"order\", event = OrderEvent)]`",
        ),
        Some(name) if name.value.trim().is_empty() => {
            cx.error_at(name.span, "the aggregate name cannot be empty: it is stored with every event")
        }
        Some(_) => {}
    }
}

/// The event enum is given.
fn check_aggregate_has_event(cx: &Ctxt, input: &AggregateStruct<'_>) {
    if input.event.is_none() {
        cx.error_spanned_by(
            input.attribute_tokens(),
            "missing `event = ...` in `#[aggregate(...)]`: name the `#[derive(Event)]` enum this aggregate is made of, e.g. `#[aggregate(name = \"order\", event = OrderEvent)]`",
        );
    }
}

/// Snapshots are taken every N >= 1 events; a state version only means something with them.
fn check_snapshot_settings(cx: &Ctxt, input: &AggregateStruct<'_>) {
    if let Some((_, every)) = input
        .snapshot_every
        .as_ref()
        .filter(|(_, every)| every.value == 0)
    {
        cx.error_at(
            every.span,
            "`snapshot_every` must be 1 or more; leave it out to take no snapshots",
        );
    }
    if let Some((key, version)) = &input.state_version {
        if version.value == 0 {
            cx.error_at(version.span, "state versions start at 1");
        }
        if input.snapshot_every.is_none() {
            cx.error_spanned_by(
                key,
                "`state_version` is the version of snapshots, but this aggregate takes none; add `snapshot_every = N` or remove `state_version`",
            );
        }
    }
}
