//! Query-string parameters with 400s that name the parameter and the bad value.

use parley_domain::create::parse_bool;

use crate::http::error::ApiError;

/// Parsed query parameters; unknown ones are ignored, the first of repeated ones wins.
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Self {
        Self(
            url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A boolean: `true`/`false`/`1`/`0`, any case.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        self.get(name)
            .map(|v| parse_bool(v).ok_or_else(|| invalid(name, v, "expected true or false")))
            .transpose()
    }

    /// An integer within `range`.
    pub fn int(&self, name: &str, range: std::ops::RangeInclusive<u32>) -> Result<Option<u32>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse::<u32>()
                    .ok()
                    .filter(|n| range.contains(n))
                    .ok_or_else(|| {
                        invalid(
                            name,
                            v,
                            &format!("expected an integer from {} to {}", range.start(), range.end()),
                        )
                    })
            })
            .transpose()
    }

    /// One of a fixed set of strings, mapped by `parse`.
    pub fn choice<T>(
        &self,
        name: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ApiError> {
        self.get(name)
            .map(|v| parse(v).ok_or_else(|| invalid(name, v, expected)))
            .transpose()
    }
}

fn invalid(name: &str, value: &str, expected: &str) -> ApiError {
    // Echo enough of the value to recognise it, never a megabyte of it.
    let shown: String = value.chars().take(64).collect();
    let ellipsis = if shown.len() < value.len() { "…" } else { "" };
    ApiError::BadRequest(format!(
        "Invalid value for {name}: {shown:?}{ellipsis} ({expected})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_accept_any_case_and_digits() {
        let q = Query::parse(Some("a=TRUE&b=0&c=yes"));
        assert_eq!(q.bool("a").unwrap(), Some(true));
        assert_eq!(q.bool("b").unwrap(), Some(false));
        assert_eq!(q.bool("missing").unwrap(), None);
        let e = q.bool("c").unwrap_err().to_string();
        assert!(e.starts_with("Invalid value for c: \"yes\""), "{e}");
    }

    #[test]
    fn integers_outside_the_range_are_rejected() {
        let q = Query::parse(Some("limit=101&page=-1&ok=5"));
        assert!(q.int("limit", 1..=100).is_err());
        assert!(q.int("page", 0..=u32::MAX).is_err());
        assert_eq!(q.int("ok", 1..=100).unwrap(), Some(5));
    }
}
