//! Expansion of `#[derive(Aggregate)]`: the stream type name, snapshot settings and the
//! exhaustive apply dispatch over the event enum.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::DeriveInput;
use syn::spanned::Spanned;

use crate::ast::AggregateStruct;
use crate::check;
use crate::ctxt;

pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    ctxt::derive(
        input,
        AggregateStruct::parse,
        check::aggregate,
        expand,
        fallback,
    )
}

fn expand(input: &AggregateStruct<'_>) -> TokenStream {
    let ident = &input.original.ident;
    let krate = &input.krate;
    let private = quote!(#krate::__private);
    let name = input.name.as_ref().map(|name| &name.value);
    let event = input
        .event
        .as_ref()
        .expect("checked: the event enum is given");
    // Spanned on the event type, so a missing `Apply` implementation is reported at
    // `event = OrderEvent`, naming the aggregate and the event.
    let dispatch = quote_spanned!(event.span()=> <#event as #private::Dispatch<Self>>::dispatch);
    let dispatch = quote!(#dispatch(__es_event, self));
    let state_version = input
        .state_version
        .as_ref()
        .map_or(1, |(_, version)| version.value);
    let snapshots = input.snapshot_every.as_ref().map(|(key, every)| {
        let every = every.value;
        let encode = quote_spanned!(key.span()=> #private::encode_state::<Self>);
        let encode = quote!(#encode(self));
        let decode = quote_spanned!(key.span()=> #private::serde_json::from_str::<Self>);
        let decode = quote!(#decode(__es_state));
        quote! {
            const SNAPSHOT_EVERY: ::core::option::Option<u64> = ::core::option::Option::Some(#every);
            const STATE_VERSION: u32 = #state_version;

            fn encode_state(
                &self,
            ) -> ::core::option::Option<::core::result::Result<#private::RawJson, #private::serde_json::Error>> {
                ::core::option::Option::Some(#encode)
            }

            fn decode_state(
                __es_state: &str,
            ) -> ::core::option::Option<::core::result::Result<Self, #private::serde_json::Error>> {
                ::core::option::Option::Some(#decode)
            }
        }
    });
    // The impl carries the struct's span (a missing `Default` is reported there); the method,
    // built apart, keeps call-site hygiene for `self` and its locals, so the derive also works
    // on a struct written by `macro_rules!`.
    let apply_event = quote! {
        #[inline]
        fn apply_event(&mut self, __es_event: &Self::Event) {
            #dispatch
        }
    };
    quote_spanned! {ident.span()=>
        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #private::Aggregate for #ident {
                const NAME: &'static str = #name;
                type Event = #event;

                #apply_event

                #snapshots
            }
        };
    }
}

/// After an error: an impl whose body never runs, when the event enum is known, so the mistake
/// is not repeated as "`Aggregate` is not implemented" wherever the struct is used.
fn fallback(input: &AggregateStruct<'_>) -> TokenStream {
    let Some(event) = &input.event else {
        return TokenStream::new();
    };
    let ident = &input.original.ident;
    let krate = &input.krate;
    quote! {
        const _: () = {
            impl #krate::__private::Aggregate for #ident {
                const NAME: &'static str = "";
                type Event = #event;
                fn apply_event(&mut self, _: &Self::Event) { ::core::unreachable!() }
            }
        };
    }
}
