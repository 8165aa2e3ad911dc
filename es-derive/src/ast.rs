//! The derive inputs as small typed trees, each node keeping its `syn` node for spans.
//! Parsing records attribute syntax errors; the rules across attributes live in `check.rs`.

use syn::punctuated::Punctuated;
use syn::{Data, DeriveInput, Fields, FieldsNamed, Ident, LitInt, LitStr, Path, Token, Type};

use crate::attr::{self, Keys, Spanned};
use crate::ctxt::Ctxt;

/// An enum with `#[derive(Event)]`.
pub(crate) struct EventEnum<'a> {
    pub(crate) original: &'a DeriveInput,
    pub(crate) krate: Path,
    pub(crate) variants: Vec<EventVariant<'a>>,
}

/// One variant: one event type.
pub(crate) struct EventVariant<'a> {
    pub(crate) original: &'a syn::Variant,
    pub(crate) shape: Shape<'a>,
    /// `name = "..."`, if given.
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) aliases: Vec<Spanned<String>>,
    /// `version = N`, if given.
    pub(crate) version: Option<Spanned<u32>>,
    /// The `upcast` key, if given, and its steps.
    pub(crate) upcast: Option<(Path, Vec<UpcastStep>)>,
    /// The `derive` key, if given, and the extra derives of a struct variant's payload struct.
    pub(crate) derives: Option<(Path, Vec<Path>)>,
    /// Whether its `#[event(...)]` attributes parsed; the value rules skip a variant whose
    /// syntax error is already reported.
    pub(crate) well_formed: bool,
}

/// What a variant holds.
pub(crate) enum Shape<'a> {
    /// No data: a marker type stands for it.
    Unit,
    /// One payload type.
    Newtype(&'a Type),
    /// Named fields: a payload struct with these fields is generated for it.
    Struct(&'a FieldsNamed),
    /// Anything else (several unnamed fields, `A()`): not supported.
    Other(&'a Fields),
}

/// `k = Type` or `k = Type with function` inside `upcast(...)`.
pub(crate) struct UpcastStep {
    pub(crate) version: Spanned<u32>,
    pub(crate) ty: Type,
    pub(crate) function: Option<Path>,
}

impl<'a> EventVariant<'a> {
    /// The stable name: `name = "..."` or the variant's name.
    pub(crate) fn name(&self) -> String {
        self.name.as_ref().map_or_else(
            || self.original.ident.to_string(),
            |name| name.value.clone(),
        )
    }

    /// The current schema version (1 unless given; 0 is reported by the checks).
    pub(crate) fn version(&self) -> u32 {
        self.version.as_ref().map_or(1, |version| version.value)
    }

    pub(crate) fn steps(&self) -> &[UpcastStep] {
        self.upcast.as_ref().map_or(&[], |(_, steps)| steps)
    }
}

/// A struct with `#[derive(Aggregate)]`.
pub(crate) struct AggregateStruct<'a> {
    pub(crate) original: &'a DeriveInput,
    pub(crate) krate: Path,
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) event: Option<Type>,
    pub(crate) snapshot_every: Option<(Path, Spanned<u64>)>,
    pub(crate) state_version: Option<(Path, Spanned<u32>)>,
}

const EVENT_KEYS: &[&str] = &["name", "aliases", "version", "upcast", "derive"];
const AGGREGATE_KEYS: &[&str] = &["name", "event", "snapshot_every", "state_version"];

impl<'a> EventEnum<'a> {
    /// `None` when the input is not an enum (the error is recorded).
    pub(crate) fn parse(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let Data::Enum(data) = &input.data else {
            let keyword = match &input.data {
                Data::Struct(data) => data.struct_token.span,
                Data::Union(data) => data.union_token.span,
                Data::Enum(data) => data.enum_token.span,
            };
            cx.error_at(
                keyword,
                "`#[derive(Event)]` goes on an enum with one variant per event, e.g. `enum OrderEvent { Placed(Placed), Shipped }`; put `#[derive(Aggregate)]` on the aggregate struct",
            );
            return None;
        };
        for attr in input
            .attrs
            .iter()
            .filter(|attr| attr.path().is_ident("event"))
        {
            cx.error_at(
                attr::attr_span(attr),
                "`#[event(...)]` goes on a variant, not on the enum; the enum itself only takes `#[es(crate = \"...\")]`",
            );
        }
        let krate = attr::crate_path(cx, &input.attrs);
        let variants = data
            .variants
            .iter()
            .map(|variant| EventVariant::parse(cx, variant))
            .collect();
        Some(EventEnum {
            original: input,
            krate,
            variants,
        })
    }
}

impl<'a> EventVariant<'a> {
    fn parse(cx: &Ctxt, variant: &'a syn::Variant) -> Self {
        let shape = match &variant.fields {
            Fields::Unit => Shape::Unit,
            Fields::Unnamed(fields) if fields.unnamed.len() == 1 => {
                Shape::Newtype(&fields.unnamed[0].ty)
            }
            Fields::Named(fields) => Shape::Struct(fields),
            other => Shape::Other(other),
        };
        let mut parsed = EventVariant {
            original: variant,
            shape,
            name: None,
            aliases: Vec::new(),
            version: None,
            upcast: None,
            derives: None,
            well_formed: true,
        };
        let mut keys = Keys::new("event", EVENT_KEYS);
        parsed.well_formed = attr::parse_each(cx, &variant.attrs, "event", |attr| {
            attr.parse_nested_meta(|meta| {
                match keys.accept(cx, &meta)?.as_deref() {
                    Some("name") => parsed.name = Some(attr::string(&meta)?),
                    Some("aliases") => {
                        let value = meta.value()?;
                        let content;
                        syn::bracketed!(content in value);
                        let aliases = Punctuated::<LitStr, Token![,]>::parse_terminated(&content)?;
                        parsed.aliases = aliases
                            .iter()
                            .map(|alias| Spanned {
                                value: alias.value(),
                                span: alias.span(),
                            })
                            .collect();
                    }
                    Some("version") => parsed.version = Some(attr::number_u32(&meta)?),
                    Some("upcast") => {
                        let content;
                        syn::parenthesized!(content in meta.input);
                        let steps =
                            Punctuated::<UpcastStep, Token![,]>::parse_terminated(&content)?;
                        parsed.upcast = Some((meta.path.clone(), steps.into_iter().collect()));
                    }
                    Some("derive") => {
                        let content;
                        syn::parenthesized!(content in meta.input);
                        let derives = Punctuated::<Path, Token![,]>::parse_terminated(&content)?;
                        parsed.derives = Some((meta.path.clone(), derives.into_iter().collect()));
                    }
                    _ => {}
                }
                Ok(())
            })
        });
        parsed
    }
}

impl syn::parse::Parse for UpcastStep {
    fn parse(input: syn::parse::ParseStream<'_>) -> syn::Result<Self> {
        let version: LitInt = input.parse().map_err(|error| {
            syn::Error::new(
                error.span(),
                "expected an upcast step `VERSION = PayloadType`, e.g. `upcast(1 = OrderCreatedV1)`",
            )
        })?;
        input.parse::<Token![=]>()?;
        let ty: Type = input.parse()?;
        let function = if input.peek(Ident)
            && input
                .fork()
                .parse::<Ident>()
                .is_ok_and(|ident| ident == "with")
        {
            input.parse::<Ident>()?;
            Some(input.parse::<Path>()?)
        } else {
            None
        };
        Ok(UpcastStep {
            version: Spanned {
                value: version.base10_parse()?,
                span: version.span(),
            },
            ty,
            function,
        })
    }
}

impl<'a> AggregateStruct<'a> {
    /// `None` when the input is not a struct (the error is recorded).
    pub(crate) fn parse(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        if let Data::Enum(_) | Data::Union(_) = &input.data {
            let keyword = match &input.data {
                Data::Enum(data) => data.enum_token.span,
                Data::Union(data) => data.union_token.span,
                Data::Struct(data) => data.struct_token.span,
            };
            cx.error_at(
                keyword,
                "`#[derive(Aggregate)]` goes on the aggregate's state struct; put `#[derive(Event)]` on the enum of its events",
            );
            return None;
        }
        let mut parsed = AggregateStruct {
            original: input,
            krate: attr::crate_path(cx, &input.attrs),
            name: None,
            event: None,
            snapshot_every: None,
            state_version: None,
        };
        let mut keys = Keys::new("aggregate", AGGREGATE_KEYS);
        attr::parse_each(cx, &input.attrs, "aggregate", |attr| {
            attr.parse_nested_meta(|meta| {
                match keys.accept(cx, &meta)?.as_deref() {
                    Some("name") => parsed.name = Some(attr::string(&meta)?),
                    Some("event") => parsed.event = Some(meta.value()?.parse()?),
                    Some("snapshot_every") => {
                        parsed.snapshot_every = Some((meta.path.clone(), attr::number_u64(&meta)?))
                    }
                    Some("state_version") => {
                        parsed.state_version = Some((meta.path.clone(), attr::number_u32(&meta)?))
                    }
                    _ => {}
                }
                Ok(())
            })
        });
        Some(parsed)
    }

    /// What to underline in errors about the attribute as a whole: the attribute, or the
    /// struct's name when there is none.
    pub(crate) fn attribute_tokens(&self) -> proc_macro2::TokenStream {
        use quote::ToTokens;
        self.original
            .attrs
            .iter()
            .find(|attr| attr.path().is_ident("aggregate"))
            .map_or_else(
                || self.original.ident.to_token_stream(),
                ToTokens::to_token_stream,
            )
    }
}
