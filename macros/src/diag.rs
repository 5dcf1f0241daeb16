//! Collecting every mistake before stopping, and the "did you mean" hint.

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

/// The name of `known` nearest to `name`, if near enough to be a typo.
pub(crate) fn nearest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), k))
        .filter(|&(distance, k)| distance > 0 && distance <= 2.max(k.chars().count() / 3))
        .min()
        .map(|(_, k)| k)
}

/// `unknown <what> `<name>`; did you mean `<near>`? <Known>: a, b, c`, where
/// `known_as` names the list ("Known", "Valid keys").
pub(crate) fn unknown<'a>(
    what: &str,
    name: &str,
    known: impl IntoIterator<Item = &'a str> + Clone,
    known_as: &str,
) -> String {
    match nearest(name, known.clone()) {
        Some(near) => format!(
            "unknown {what} `{name}`; did you mean `{near}`? {known_as}: {}",
            list(known)
        ),
        None => format!(
            "unknown {what} `{name}`; {}: {}",
            known_as.to_lowercase(),
            list(known)
        ),
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

/// `a, b, c`.
pub(crate) fn list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    const COMPONENTS: [&str; 3] = ["datastorage", "postgres", "redis"];

    #[test]
    fn suggests_the_nearest_name_for_a_typo() {
        assert_eq!(nearest("datastorge", COMPONENTS), Some("datastorage"));
        assert_eq!(nearest("postgre", COMPONENTS), Some("postgres"));
        assert_eq!(nearest("rdis", COMPONENTS), Some("redis"));
        assert_eq!(
            nearest("consumr", ["consumer", "needs", "crate"]),
            Some("consumer")
        );
    }

    #[test]
    fn suggests_nothing_for_a_far_name() {
        assert_eq!(nearest("kafka", COMPONENTS), None);
        assert_eq!(nearest("mysql", COMPONENTS), None);
    }

    #[test]
    fn unknown_lists_every_known_name() {
        assert_eq!(
            unknown("component", "datastorge", COMPONENTS, "Known"),
            "unknown component `datastorge`; did you mean `datastorage`? Known: datastorage, postgres, redis"
        );
        assert_eq!(
            unknown("component", "kafka", COMPONENTS, "Known"),
            "unknown component `kafka`; known: datastorage, postgres, redis"
        );
    }

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
        let messages: Vec<String> = errors
            .finish(())
            .unwrap_err()
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(messages, ["first", "second"]);
    }
}
