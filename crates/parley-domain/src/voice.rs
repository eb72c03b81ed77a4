//! The stock voice catalogue: the `voice_name` slugs that image-trained replicas speak with.

/// A stock voice (`GET /v2/voices`).
#[derive(Debug, PartialEq, Eq)]
pub struct Voice {
    /// The slug clients send as `voice_name`.
    pub name: &'static str,
    /// The stock replica whose voice it is.
    pub replica_id: &'static str,
    /// Catalogue tags, for the `tag`/`tags` filters.
    pub tags: &'static [&'static str],
}

/// The stock voices: the slugs the public docs name, each tied to a stock replica.
pub const VOICES: &[Voice] = &[
    Voice {
        name: "anna",
        replica_id: "r90bbd427f71",
        tags: &["female", "english", "conversational"],
    },
    Voice {
        name: "benjamin",
        replica_id: "rfe12d8b9597",
        tags: &["male", "english", "conversational"],
    },
    Voice {
        name: "ivy",
        replica_id: "r4067604db72",
        tags: &["female", "english", "calm"],
    },
    Voice {
        name: "james",
        replica_id: "re8e740a42",
        tags: &["male", "english", "energetic"],
    },
    Voice {
        name: "julia",
        replica_id: "rf4e9d9790f0",
        tags: &["female", "english", "professional"],
    },
    Voice {
        name: "liam",
        replica_id: "r5dc7c7d0bcb",
        tags: &["male", "english", "calm"],
    },
];

/// Looks up a stock voice by its slug, in any case: the hosted API's `voice_name` is
/// case-insensitive.
pub fn voice(name: &str) -> Option<&'static Voice> {
    VOICES.iter().find(|v| v.name.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_voice_belongs_to_a_stock_replica() {
        for v in VOICES {
            assert!(crate::registry::replica(v.replica_id).is_some(), "{}", v.name);
        }
    }

    #[test]
    fn voices_are_found_in_any_case_and_sorted_by_name() {
        for v in VOICES {
            assert_eq!(voice(&v.name.to_uppercase()), Some(v));
        }
        assert_eq!(voice("nobody"), None);
        assert!(VOICES.windows(2).all(|w| w[0].name < w[1].name));
    }
}
