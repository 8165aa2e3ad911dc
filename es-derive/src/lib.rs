//! placeholder until the derive lands
use proc_macro::TokenStream;
#[proc_macro_derive(Event, attributes(event, es))]
pub fn derive_event(_input: TokenStream) -> TokenStream { TokenStream::new() }
#[proc_macro_derive(Aggregate, attributes(aggregate, es))]
pub fn derive_aggregate(_input: TokenStream) -> TokenStream { TokenStream::new() }
