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

fn markers(input: &EventEnum<'_>) -> TokenStream {
    let units: Vec<&EventVariant<'_>> = input
        .variants
        .iter()
        .filter(|variant| matches!(variant.shape, Shape::Unit))
        .collect();
    if units.is_empty() {
        return TokenStream::new();
    }
    let enum_ident = &input.original.ident;
    let vis = &input.original.vis;
    let inner_vis = inner_visibility(vis);
    let module = marker_module(enum_ident);
    let module_doc = format!(
        "Marker types for the events of `{enum_ident}` that carry no data, so each has a type for its `Apply` implementation."
    );
    let structs = units.iter().map(|variant| {
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
    });
    quote! {
        #[doc = #module_doc]
        #vis mod #module {
            #(#structs)*
        }
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
        let variant_ident = &variant.original.ident;
        match variant.shape {
            Shape::Newtype(ty) => {
                let encode = quote_spanned!(ty.span()=> #private::encode::<#ty>);
                let call = quote!(#encode(__es_payload));
                quote!(Self::#variant_ident(__es_payload) => #call,)
            }
            _ => quote!(Self::#variant_ident => ::core::result::Result::Ok(#private::RawJson::empty_object()),),
        }
    });
    let decode_arms = input
        .variants
        .iter()
        .zip(&names)
        .zip(&versions)
        .map(|((variant, name), version)| decode_arm(&private, variant, name, *version));
    let schemas = input.variants.iter().zip(&names).zip(&versions).map(|((variant, name), version)| {
        let schema = |ty: &syn::Type, version: u32| {
            let schema = quote_spanned!(ty.span()=> #private::schema::<#ty>);
            let call = quote!(#schema(__es_generator));
            quote!(#private::EventSchema { event_type: #name, version: #version, schema: #call })
        };
        match variant.shape {
            Shape::Newtype(ty) => {
                let older = variant.steps().iter().map(|step| schema(&step.ty, step.version.value));
                let current = schema(ty, *version);
                quote!(#current, #(#older,)*)
            }
            _ => quote!(#private::EventSchema { event_type: #name, version: #version, schema: #private::unit_schema(#name) },),
        }
    });
    let apply_bounds = input.variants.iter().map(|variant| {
        let payload = payload_type(&module, variant);
        quote!(#private::Apply<#payload>)
    });
    let dispatch_arms = input.variants.iter().map(|variant| {
        let variant_ident = &variant.original.ident;
        let payload = payload_type(&module, variant);
        match variant.shape {
            Shape::Newtype(_) => quote! {
                Self::#variant_ident(__es_payload) => <__EsAggregate as #private::Apply<#payload>>::apply(__es_aggregate, __es_payload),
            },
            _ => quote! {
                Self::#variant_ident => <__EsAggregate as #private::Apply<#payload>>::apply(__es_aggregate, &#payload),
            },
        }
    });
    let markers = markers(input);

    quote! {
        #markers

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
                fn encode(&self) -> ::core::result::Result<#private::RawJson, #private::serde_json::Error> {
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

                fn schemas(
                    __es_generator: &mut #private::schemars::SchemaGenerator,
                ) -> #private::std::vec::Vec<#private::EventSchema> {
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

/// The type an aggregate implements `Apply` for: the payload, or the marker of a unit variant.
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
    variant: &EventVariant<'_>,
    name: &str,
    version: u32,
) -> TokenStream {
    let variant_ident = &variant.original.ident;
    let aliases = variant.aliases.iter().map(|alias| &alias.value);
    let unsupported = quote! {
        _ => ::core::result::Result::Err(#private::unsupported_version(#name, __es_version, #version)),
    };
    let Shape::Newtype(current_ty) = variant.shape else {
        return quote! {
            #name #(| #aliases)* => match __es_version {
                #version => {
                    #private::decode_unit(#name, __es_version, __es_payload)?;
                    ::core::result::Result::Ok(Self::#variant_ident)
                }
                #unsupported
            },
        };
    };
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
            let next_ty = steps.get(position + 1).map_or(current_ty, |next| &next.ty);
            let convert = match &step.function {
                Some(function) => quote_spanned!(function.span()=> #function(#value)),
                None => {
                    let from_ty = &step.ty;
                    {
                        // A typed path, spanned on the user's type, carries the `From` obligation
                        // (so its error points there) without touching a local.
                        let step = quote_spanned!(from_ty.span()=> #private::UpcastFrom::<#from_ty>::upcast_from);
                        quote!({
                            let __es_step: fn(#from_ty) -> #next_ty = #step;
                            __es_step(#value)
                        })
                    }
                }
            };
            body.extend(quote!(let __es_value: #next_ty = #convert;));
        }
        quote! {
            #from => {
                #body
                ::core::result::Result::Ok(Self::#variant_ident(__es_value))
            }
        }
    });
    let decode_current = quote_spanned!(current_ty.span()=> #private::decode::<#current_ty>);
    let decode_current = quote!(#decode_current(#name, __es_version, __es_payload));
    quote! {
        #name #(| #aliases)* => match __es_version {
            #version => ::core::result::Result::Ok(Self::#variant_ident(#decode_current?)),
            #(#older)*
            #unsupported
        },
    }
}

/// After an error: the marker types and impls whose bodies never run, so that the one mistake
/// does not also show up as "trait not implemented" wherever the enum is used.
fn fallback(input: &EventEnum<'_>) -> TokenStream {
    let ident = &input.original.ident;
    let krate = &input.krate;
    let private = quote!(#krate::__private);
    let markers = markers(input);
    let span = Span::call_site();
    quote_spanned! {span=>
        #markers
        const _: () = {
            impl #private::Event for #ident {
                const TYPES: &'static [#private::EventType] = &[];
                fn event_type(&self) -> &'static str { ::core::unreachable!() }
                fn schema_version(&self) -> u32 { ::core::unreachable!() }
                fn encode(&self) -> ::core::result::Result<#private::RawJson, #private::serde_json::Error> {
                    ::core::unreachable!()
                }
                fn decode(_: &str, _: u32, _: &str) -> ::core::result::Result<Self, #private::DecodeError> {
                    ::core::unreachable!()
                }
                fn schemas(_: &mut #private::schemars::SchemaGenerator) -> #private::std::vec::Vec<#private::EventSchema> {
                    ::core::unreachable!()
                }
            }
            impl<__EsAggregate> #private::Dispatch<__EsAggregate> for #ident {
                fn dispatch(&self, _: &mut __EsAggregate) { ::core::unreachable!() }
            }
        };
    }
}
