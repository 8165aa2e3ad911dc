//! Expansion of `#[derive(Event)]`: marker types for data-less events, `Event` (names,
//! versions, encoding, decoding through the upcast chain, schemas) and the apply dispatch.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Ident, Visibility};

use crate::ast::{EventEnum, EventVariant, Shape};
use crate::check;
use crate::ctxt;

pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    ctxt::derive(input, EventEnum::parse, check::event, expand, fallback)
}

/// The module holding the marker types of unit variants: the enum's name in snake case.
pub(crate) fn marker_module(enum_ident: &Ident) -> Ident {
    let mut snake = String::new();
    let chars: Vec<char> = enum_ident.to_string().chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let after_lower =
                i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit());
            let ends_acronym = i > 0
                && chars[i - 1].is_uppercase()
                && chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if after_lower || ends_acronym {
                snake.push('_');
            }
            snake.extend(c.to_lowercase());
        } else {
            snake.push(c);
        }
    }
    Ident::new(&snake, enum_ident.span())
}

/// The visibility of an item inside the marker module that matches the enum's own.
fn inner_visibility(vis: &Visibility) -> TokenStream {
    match vis {
        Visibility::Public(_) => quote!(pub),
        Visibility::Inherited => quote!(pub(super)),
        Visibility::Restricted(restricted) => {
            let path = &restricted.path;
            let first = path
                .segments
                .first()
                .map(|segment| segment.ident.to_string());
            match first.as_deref() {
                Some("crate") => quote!(#vis),
                Some("self") => quote!(pub(super)),
                _ => quote!(pub(in super::#path)),
            }
        }
    }
}

/// The module of generated types: a marker for each unit variant and a payload struct for each
/// struct variant, so that every event has a type of its own for `Apply`.
fn generated_types(input: &EventEnum<'_>) -> TokenStream {
    let generated: Vec<&EventVariant<'_>> = input
        .variants
        .iter()
        .filter(|variant| matches!(variant.shape, Shape::Unit | Shape::Struct(_)))
        .collect();
    if generated.is_empty() {
        return TokenStream::new();
    }
    let enum_ident = &input.original.ident;
    let vis = &input.original.vis;
    let inner_vis = inner_visibility(vis);
    let module = marker_module(enum_ident);
    let module_doc = format!(
        "The types generated for the events of `{enum_ident}` that are not a payload type of their own: a marker for each event without data, a payload struct for each struct-like variant, so each event has a type for its `Apply` implementation."
    );
    let items = generated.iter().map(|variant| match variant.shape {
        Shape::Struct(fields) => payload_struct(input, variant, fields, &inner_vis),
        _ => {
            let ident = &variant.original.ident;
            let doc = format!("The `{ident}` event of `{enum_ident}`; it carries no data.");
            quote! {
                #[doc = #doc]
                #[derive(
                    ::core::fmt::Debug, ::core::clone::Clone, ::core::marker::Copy, ::core::cmp::PartialEq,
                    ::core::cmp::Eq, ::core::cmp::PartialOrd, ::core::cmp::Ord, ::core::hash::Hash,
                    ::core::default::Default
                )]
                #inner_vis struct #ident;
            }
        }
    });
    quote! {
        #[doc = #module_doc]
        #vis mod #module {
            #[allow(unused_imports)]
            use super::*;
            #(#items)*
        }
    }
}

/// The payload struct of a struct variant: its fields with their attributes (`#[serde]`,
/// `#[schemars]`, doc comments), the variant's doc comments and serde/schemars attributes, the
/// derives every payload needs (`Clone` builds it from the variant's fields, `Debug` as every
/// public type has) and those of `derive(...)`.
fn payload_struct(
    input: &EventEnum<'_>,
    variant: &EventVariant<'_>,
    fields: &syn::FieldsNamed,
    inner_vis: &TokenStream,
) -> TokenStream {
    let ident = &variant.original.ident;
    let krate = &input.krate;
    let serde_path = quote!(#krate::__private::serde)
        .to_string()
        .replace(' ', "");
    let schemars_path = quote!(#krate::__private::schemars)
        .to_string()
        .replace(' ', "");
    let kept = |attr: &&syn::Attribute| {
        ["doc", "serde", "schemars"]
            .iter()
            .any(|name| attr.path().is_ident(name))
    };
    let variant_attrs = variant.original.attrs.iter().filter(kept);
    let extra = variant
        .derives
        .as_ref()
        .map_or(&[][..], |(_, derives)| derives.as_slice());
    let fields = fields.named.iter().map(|field| {
        let attrs = field
            .attrs
            .iter()
            .filter(|attr| !attr.path().is_ident("event") && !attr.path().is_ident("es"));
        let name = &field.ident;
        let ty = &field.ty;
        quote!(#(#attrs)* #inner_vis #name: #ty)
    });
    // The variant's attributes follow the derive that introduces `serde` and `schemars`.
    quote! {
        #[derive(
            ::core::fmt::Debug, ::core::clone::Clone,
            #krate::__private::serde::Serialize, #krate::__private::serde::Deserialize,
            #krate::__private::schemars::JsonSchema
            #(, #extra)*
        )]
        #[serde(crate = #serde_path)]
        #[schemars(crate = #schemars_path)]
        #(#variant_attrs)*
        #[allow(missing_docs)]
        #inner_vis struct #ident {
            #(#fields,)*
        }
    }
}

/// How a variant holds its event: the pattern binding its data, the payload value built from
/// the bindings (by reference for a newtype, cloned for a struct variant), and how to build the
/// variant back from a payload value `__es_value`.
struct Access {
    pattern: TokenStream,
    payload_ref: TokenStream,
    construct: TokenStream,
}

fn access(module: &Ident, variant: &EventVariant<'_>) -> Access {
    let ident = &variant.original.ident;
    match variant.shape {
        Shape::Newtype(_) => Access {
            pattern: quote!(Self::#ident(__es_payload)),
            payload_ref: quote!(__es_payload),
            construct: quote!(Self::#ident(__es_value)),
        },
        Shape::Struct(fields) => {
            let names: Vec<&Option<Ident>> = fields.named.iter().map(|f| &f.ident).collect();
            let bindings: Vec<Ident> = (0..names.len())
                .map(|index| quote::format_ident!("__es_f{}", index))
                .collect();
            Access {
                pattern: quote!(Self::#ident { #(#names: #bindings),* }),
                payload_ref: quote!(&#module::#ident { #(#names: ::core::clone::Clone::clone(#bindings)),* }),
                construct: quote!({
                    let #module::#ident { #(#names: #bindings),* } = __es_value;
                    Self::#ident { #(#names: #bindings),* }
                }),
            }
        }
        _ => Access {
            pattern: quote!(Self::#ident),
            payload_ref: quote!(&#module::#ident),
            construct: quote!(Self::#ident),
        },
    }
}

fn expand(input: &EventEnum<'_>) -> TokenStream {
    let ident = &input.original.ident;
    let private = {
        let krate = &input.krate;
        quote!(#krate::__private)
    };
    let module = marker_module(ident);
    let names: Vec<String> = input.variants.iter().map(EventVariant::name).collect();
    let versions: Vec<u32> = input.variants.iter().map(EventVariant::version).collect();
    let patterns: Vec<TokenStream> = input
        .variants
        .iter()
        .map(|variant| {
            let variant_ident = &variant.original.ident;
            match variant.shape {
                Shape::Unit => quote!(Self::#variant_ident),
                Shape::Struct(_) => quote!(Self::#variant_ident { .. }),
                _ => quote!(Self::#variant_ident(..)),
            }
        })
        .collect();

    let types = input.variants.iter().zip(&names).zip(&versions).map(
        |((variant, name), version)| {
            let aliases = variant.aliases.iter().map(|alias| &alias.value);
            quote! {
                #private::EventType { name: #name, aliases: &[#(#aliases),*], version: #version }
            }
        },
    );
    let encode_arms = input.variants.iter().map(|variant| {
        let Access {
            pattern,
            payload_ref,
            ..
        } = access(&module, variant);
        match variant.shape {
            Shape::Newtype(ty) => {
                let encode = quote_spanned!(ty.span()=> #private::encode::<#ty>);
                quote!(#pattern => #encode(#payload_ref),)
            }
            Shape::Struct(_) => {
                let payload = payload_type(&module, variant);
                quote!(#pattern => #private::encode::<#payload>(#payload_ref),)
            }
            _ => quote!(#pattern => ::core::result::Result::Ok(#private::RawJson::empty_object()),),
        }
    });
    let decode_arms = input
        .variants
        .iter()
        .zip(&names)
        .zip(&versions)
        .map(|((variant, name), version)| decode_arm(&private, &module, variant, name, *version));
    let schemas =
        input
            .variants
            .iter()
            .zip(&names)
            .zip(&versions)
            .map(|((variant, name), version)| {
                let schema = |ty: TokenStream, span: Span, version: u32| {
                    let schema = quote_spanned!(span=> #private::schema::<#ty>);
                    quote!(#schema(#name, #version))
                };
                match variant.shape {
                    Shape::Unit | Shape::Other(_) => {
                        quote!(#private::unit_schema(#name, #version),)
                    }
                    _ => {
                        let (current_ty, span) = match variant.shape {
                            Shape::Newtype(ty) => (quote!(#ty), ty.span()),
                            _ => (
                                payload_type(&module, variant),
                                variant.original.ident.span(),
                            ),
                        };
                        let current = schema(current_ty, span, *version);
                        let mut steps: Vec<_> = variant.steps().iter().collect();
                        steps.sort_by_key(|step| step.version.value);
                        let older = steps.iter().map(|step| {
                            let ty = &step.ty;
                            schema(quote!(#ty), ty.span(), step.version.value)
                        });
                        quote!(#(#older,)* #current,)
                    }
                }
            });
    let apply_bounds = input.variants.iter().map(|variant| {
        let payload = payload_type(&module, variant);
        quote!(#private::Apply<#payload>)
    });
    let dispatch_arms = input.variants.iter().map(|variant| {
        let payload = payload_type(&module, variant);
        let Access {
            pattern,
            payload_ref,
            ..
        } = access(&module, variant);
        quote! {
            #pattern => <__EsAggregate as #private::Apply<#payload>>::apply(__es_aggregate, #payload_ref),
        }
    });
    let generated = generated_types(input);

    quote! {
        #generated

        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #private::Event for #ident {
                const TYPES: &'static [#private::EventType] = &[#(#types),*];

                #[inline]
                fn event_type(&self) -> &'static str {
                    match self {
                        #(#patterns => #names,)*
                    }
                }

                #[inline]
                fn schema_version(&self) -> u32 {
                    match self {
                        #(#patterns => #versions,)*
                    }
                }

                #[inline]
                fn encode(&self) -> ::core::result::Result<#private::RawJson, #private::EncodeError> {
                    match self {
                        #(#encode_arms)*
                    }
                }

                fn decode(
                    __es_type: &str,
                    __es_version: u32,
                    __es_payload: &str,
                ) -> ::core::result::Result<Self, #private::DecodeError> {
                    match __es_type {
                        #(#decode_arms)*
                        _ => ::core::result::Result::Err(#private::unknown_type(__es_type)),
                    }
                }

                fn schemas() -> #private::std::vec::Vec<#private::EventSchema> {
                    #private::std::vec![#(#schemas)*]
                }
            }

            #[automatically_derived]
            impl<__EsAggregate> #private::Dispatch<__EsAggregate> for #ident
            where
                __EsAggregate: #(#apply_bounds)+*,
            {
                #[inline]
                fn dispatch(&self, __es_aggregate: &mut __EsAggregate) {
                    match self {
                        #(#dispatch_arms)*
                    }
                }
            }
        };
    }
}

/// The type an aggregate implements `Apply` for: the payload, or the generated type of a unit
/// or struct variant.
fn payload_type(module: &Ident, variant: &EventVariant<'_>) -> TokenStream {
    match variant.shape {
        Shape::Newtype(ty) => quote!(#ty),
        _ => {
            let ident = &variant.original.ident;
            quote!(#module::#ident)
        }
    }
}

/// `"Name" | "Alias" => match version { current => ..., older => decode + upcast, _ => error }`.
fn decode_arm(
    private: &TokenStream,
    module: &Ident,
    variant: &EventVariant<'_>,
    name: &str,
    version: u32,
) -> TokenStream {
    let variant_ident = &variant.original.ident;
    let aliases = variant.aliases.iter().map(|alias| &alias.value);
    let unsupported = quote! {
        _ => ::core::result::Result::Err(#private::unsupported_version(#name, __es_version, #version)),
    };
    let (current_ty, current_span) = match variant.shape {
        Shape::Newtype(ty) => (quote!(#ty), ty.span()),
        Shape::Struct(_) => (payload_type(module, variant), variant_ident.span()),
        _ => {
            return quote! {
                #name #(| #aliases)* => match __es_version {
                    #version => {
                        #private::decode_unit(#name, __es_version, __es_payload)?;
                        ::core::result::Result::Ok(Self::#variant_ident)
                    }
                    #unsupported
                },
            };
        }
    };
    let construct = access(module, variant).construct;
    let mut steps: Vec<_> = variant.steps().iter().collect();
    steps.sort_by_key(|step| step.version.value);
    let older = (0..steps.len()).map(|index| {
        let from = steps[index].version.value;
        let mut body = {
            let ty = &steps[index].ty;
            let decode = quote_spanned!(ty.span()=> #private::decode::<#ty>);
            let decode = quote!(#decode(#name, __es_version, __es_payload));
            quote!(let __es_value = #decode?;)
        };
        // Locals keep call-site hygiene inside calls spanned on the user's tokens.
        let value = quote!(__es_value);
        for (position, step) in steps.iter().enumerate().skip(index) {
            let next_ty = steps
                .get(position + 1)
                .map_or_else(|| current_ty.clone(), |next| {
                    let ty = &next.ty;
                    quote!(#ty)
                });
            let convert = match &step.function {
                Some(function) => quote_spanned!(function.span()=> #function(#value)),
                None => {
                    let from_ty = &step.ty;
                    // A typed path, spanned on the user's type, carries the `From` obligation
                    // (so its error points there) without touching a local.
                    let step = quote_spanned!(from_ty.span()=> #private::UpcastFrom::<#from_ty>::upcast_from);
                    quote!({
                        let __es_step: fn(#from_ty) -> #next_ty = #step;
                        __es_step(#value)
                    })
                }
            };
            body.extend(quote!(let __es_value: #next_ty = #convert;));
        }
        quote! {
            #from => {
                #body
                ::core::result::Result::Ok(#construct)
            }
        }
    });
    let decode_current = quote_spanned!(current_span=> #private::decode::<#current_ty>);
    let decode_current = quote!(#decode_current(#name, __es_version, __es_payload));
    quote! {
        #name #(| #aliases)* => match __es_version {
            #version => {
                let __es_value: #current_ty = #decode_current?;
                ::core::result::Result::Ok(#construct)
            }
            #(#older)*
            #unsupported
        },
    }
}

/// After an error: the generated types and impls whose bodies never run, so that the one
/// mistake does not also show up as "trait not implemented" wherever the enum is used.
fn fallback(input: &EventEnum<'_>) -> TokenStream {
    let ident = &input.original.ident;
    let krate = &input.krate;
    let private = quote!(#krate::__private);
    let generated = generated_types(input);
    let span = Span::call_site();
    quote_spanned! {span=>
        #generated
        const _: () = {
            impl #private::Event for #ident {
                const TYPES: &'static [#private::EventType] = &[];
                fn event_type(&self) -> &'static str { ::core::unreachable!() }
                fn schema_version(&self) -> u32 { ::core::unreachable!() }
                fn encode(&self) -> ::core::result::Result<#private::RawJson, #private::EncodeError> {
                    ::core::unreachable!()
                }
                fn decode(_: &str, _: u32, _: &str) -> ::core::result::Result<Self, #private::DecodeError> {
                    ::core::unreachable!()
                }
                fn schemas() -> #private::std::vec::Vec<#private::EventSchema> {
                    ::core::unreachable!()
                }
            }
            impl<__EsAggregate> #private::Dispatch<__EsAggregate> for #ident {
                fn dispatch(&self, _: &mut __EsAggregate) { ::core::unreachable!() }
            }
        };
    }
}
