//! Collects every error found in a derive input, so a user sees all of them at once.

use std::cell::RefCell;
use std::fmt::Display;

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::DeriveInput;

/// An error collector that must be [`checked`](Ctxt::check) before it is dropped, so that no
/// error is lost by accident (serde_derive's pattern).
pub(crate) struct Ctxt {
    errors: RefCell<Option<Vec<syn::Error>>>,
}

impl Ctxt {
    pub(crate) fn new() -> Self {
        Ctxt {
            errors: RefCell::new(Some(Vec::new())),
        }
    }

    /// Records an error underlining `tokens`.
    pub(crate) fn error_spanned_by<T: ToTokens, M: Display>(&self, tokens: T, message: M) {
        self.push(syn::Error::new_spanned(tokens.into_token_stream(), message));
    }

    /// Records an error at `span`.
    pub(crate) fn error_at<M: Display>(&self, span: proc_macro2::Span, message: M) {
        self.push(syn::Error::new(span, message));
    }

    pub(crate) fn push(&self, error: syn::Error) {
        self.errors
            .borrow_mut()
            .as_mut()
            .expect("Ctxt used after check")
            .push(error);
    }

    /// All recorded errors combined into one, or `Ok` when there are none.
    pub(crate) fn check(self) -> syn::Result<()> {
        let errors = self.errors.borrow_mut().take().expect("Ctxt checked twice");
        let mut errors = errors.into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for error in errors {
            combined.combine(error);
        }
        Err(combined)
    }
}

impl Drop for Ctxt {
    fn drop(&mut self) {
        if !std::thread::panicking() && self.errors.borrow().is_some() {
            panic!("es-derive: a Ctxt was dropped without being checked");
        }
    }
}

/// The pipeline of both derives: parse, check, then expand; on errors, the errors plus the
/// fallback impls (unless the input is generic, where a fallback could only add errors).
pub(crate) fn derive<'a, T>(
    input: &'a DeriveInput,
    parse: fn(&Ctxt, &'a DeriveInput) -> Option<T>,
    check: fn(&Ctxt, &T),
    expand: fn(&T) -> TokenStream,
    fallback: fn(&T) -> TokenStream,
) -> TokenStream {
    let cx = Ctxt::new();
    let parsed = parse(&cx, input);
    if let Some(parsed) = &parsed {
        check(&cx, parsed);
    }
    match (cx.check(), parsed) {
        (Ok(()), Some(parsed)) => expand(&parsed),
        (Ok(()), None) => unreachable!("an input that does not parse records an error"),
        (Err(error), parsed) => {
            let mut tokens = error.to_compile_error();
            if input.generics.params.is_empty() {
                tokens.extend(parsed.as_ref().map(fallback));
            }
            tokens
        }
    }
}
