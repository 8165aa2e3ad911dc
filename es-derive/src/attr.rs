//! Shared attribute-parsing helpers: duplicate and unknown keys, literal values, `#[es(...)]`.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned as _;
use syn::{Attribute, LitInt, LitStr, Path};

use crate::ctxt::Ctxt;

/// A value from an attribute with the span of the token that gave it.
#[derive(Clone)]
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
    pub(crate) span: Span,
}

/// Tracks which keys of one attribute kind were seen, to report the second of a pair.
pub(crate) struct Keys {
    /// `event`, `aggregate` or `es`: how messages name the attribute.
    attribute: &'static str,
    known: &'static [&'static str],
    seen: Vec<String>,
}

impl Keys {
    pub(crate) fn new(attribute: &'static str, known: &'static [&'static str]) -> Self {
        Keys {
            attribute,
            known,
            seen: Vec::new(),
        }
    }

    /// The key of `meta` if it is known and not seen before; otherwise records the error, skips
    /// the key's value so parsing goes on, and returns `None`.
    pub(crate) fn accept(
        &mut self,
        cx: &Ctxt,
        meta: &ParseNestedMeta<'_>,
    ) -> syn::Result<Option<String>> {
        let key = meta
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_else(|| path_text(&meta.path));
        if !self.known.contains(&key.as_str()) {
            let mut message = format!("unknown {} attribute `{key}`", self.attribute);
            match did_you_mean(&key, self.known) {
                Some(close) => message.push_str(&format!("; did you mean `{close}`?")),
                None => message.push_str(&format!("; expected one of {}", list(self.known))),
            }
            cx.error_spanned_by(&meta.path, message);
            skip_value(meta)?;
            return Ok(None);
        }
        if self.seen.contains(&key) {
            cx.error_spanned_by(
                &meta.path,
                format!(
                    "duplicate {} attribute `{key}`: give it once",
                    self.attribute
                ),
            );
            skip_value(meta)?;
            return Ok(None);
        }
        self.seen.push(key.clone());
        Ok(Some(key))
    }
}

fn path_text(path: &Path) -> String {
    quote::quote!(#path).to_string().replace(' ', "")
}

fn list(known: &[&str]) -> String {
    known
        .iter()
        .map(|key| format!("`{key}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Consumes `= value` or `(...)` after an unwanted key.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<proc_macro2::TokenStream>()?;
    }
    Ok(())
}

/// The known key closest to `key`, if it is close enough to be a typo.
pub(crate) fn did_you_mean<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= 2.max(candidate.len() / 3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Parses `= "text"`.
pub(crate) fn string(meta: &ParseNestedMeta<'_>) -> syn::Result<Spanned<String>> {
    let literal: LitStr = meta.value()?.parse()?;
    Ok(Spanned {
        value: literal.value(),
        span: literal.span(),
    })
}

/// Parses `= N` as a `u32`.
pub(crate) fn number_u32(meta: &ParseNestedMeta<'_>) -> syn::Result<Spanned<u32>> {
    let literal: LitInt = meta.value()?.parse()?;
    Ok(Spanned {
        value: literal.base10_parse()?,
        span: literal.span(),
    })
}

/// Parses `= N` as a `u64`.
pub(crate) fn number_u64(meta: &ParseNestedMeta<'_>) -> syn::Result<Spanned<u64>> {
    let literal: LitInt = meta.value()?.parse()?;
    Ok(Spanned {
        value: literal.base10_parse()?,
        span: literal.span(),
    })
}

/// The runtime crate's path: `::es_core` unless `#[es(crate = "...")]` says otherwise.
pub(crate) fn crate_path(cx: &Ctxt, attrs: &[Attribute]) -> Path {
    let mut path = None;
    let mut keys = Keys::new("es", &["crate"]);
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("es")) {
        let parsed = attr.parse_nested_meta(|meta| {
            if keys.accept(cx, &meta)?.is_some() {
                let literal: LitStr = meta.value()?.parse()?;
                match literal.parse::<Path>() {
                    Ok(parsed) => path = Some(parsed),
                    Err(_) => cx.error_spanned_by(
                        &literal,
                        "`crate` takes a path, e.g. `crate = \"my_crate::es\"`",
                    ),
                }
            }
            Ok(())
        });
        if let Err(error) = parsed {
            cx.push(error);
        }
    }
    path.unwrap_or_else(|| syn::parse_quote!(::es_core))
}

/// Records an attribute's parse error and goes on with the next attribute; returns whether
/// every attribute parsed, so rules about their values can skip what is already reported.
pub(crate) fn parse_each(
    cx: &Ctxt,
    attrs: &[Attribute],
    name: &str,
    mut parse: impl FnMut(&Attribute) -> syn::Result<()>,
) -> bool {
    let mut parsed = true;
    for attr in attrs.iter().filter(|attr| attr.path().is_ident(name)) {
        if let syn::Meta::Path(_) = attr.meta {
            cx.error_spanned_by(
                attr,
                format!("`#[{name}]` needs arguments, e.g. `#[{name}(...)]`"),
            );
            parsed = false;
            continue;
        }
        if let Err(error) = parse(attr) {
            cx.push(error);
            parsed = false;
        }
    }
    parsed
}

/// The span of an attribute's name, for errors about where it stands.
pub(crate) fn attr_span(attr: &Attribute) -> Span {
    attr.path().span()
}
