//! Collecting every mistake before stopping, and showing tokens in messages.

use std::fmt::Display;

use proc_macro2::Span;

/// All errors found so far, each at its own token.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    /// Records an error at `span`.
    pub(crate) fn at(&mut self, span: Span, message: impl Display) {
        self.push(syn::Error::new(span, message));
    }

    /// Records an error spanning `tokens`, first to last.
    pub(crate) fn spanned(&mut self, tokens: impl quote::ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// Records an error (which may itself hold several).
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// Keeps the value of `result`, recording its error.
    pub(crate) fn take<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        result.map_err(|e| self.push(e)).ok()
    }

    /// `Ok(value)` when nothing was recorded.
    pub(crate) fn finish<T>(self, value: T) -> syn::Result<T> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(value),
        }
    }
}

/// Tokens as a reader would write them: `x: &u32`, not `x : & u32`.
pub(crate) fn show(tokens: impl quote::ToTokens) -> String {
    tokens
        .to_token_stream()
        .to_string()
        .replace(" : ", ": ")
        .replace("& ", "&")
        .replace(" ,", ",")
        .replace(" < ", "<")
        .replace(" >", ">")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn shows_parameters_as_written() {
        let param: syn::FnArg = syn::parse_quote!(retries: &mut Vec<u32>);
        assert_eq!(show(&param), "retries: &mut Vec<u32>");
        let param: syn::FnArg = syn::parse_quote!(infra: &'a Infra);
        assert_eq!(show(&param), "infra: &'a Infra");
    }

    #[test]
    fn errors_combine_in_order() {
        let mut errors = Errors::default();
        assert!(errors.take(Ok::<_, syn::Error>(1)).is_some());
        errors.at(Span::call_site(), "first");
        errors.at(Span::call_site(), "second");
        let messages: Vec<String> = errors.finish(()).unwrap_err().into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages, ["first", "second"]);
    }
}
