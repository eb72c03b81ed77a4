//! The objects a conversation uses besides itself: personas, replicas, documents, guardrails, objectives.

/// What kind of object a stored resource is; each has its own wire id prefix and its own routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// A persona (`/v2/personas`), also read and written as a PAL (`/v2/pals`).
    Persona,
    /// A replica (`/v2/replicas`), also read and written as a face (`/v2/faces`).
    Replica,
    /// A knowledge-base document (`/v2/documents`).
    Document,
    /// A set of guardrails (`/v2/guardrails`).
    Guardrail,
    /// A set of objectives (`/v2/objectives`).
    Objective,
}

impl ResourceKind {
    /// Every kind, so parsing cannot miss one.
    pub const ALL: [Self; 5] = [
        Self::Persona,
        Self::Replica,
        Self::Document,
        Self::Guardrail,
        Self::Objective,
    ];

    /// The stored form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Persona => "persona",
            Self::Replica => "replica",
            Self::Document => "document",
            Self::Guardrail => "guardrail",
            Self::Objective => "objective",
        }
    }

    /// Parses the stored form.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }

    /// The first letter of the kind's wire ids.
    pub const fn id_prefix(self) -> char {
        match self {
            Self::Persona => 'p',
            Self::Replica => 'r',
            Self::Document => 'd',
            Self::Guardrail => 'g',
            Self::Objective => 'o',
        }
    }
}

/// The prefix of a resource's row id, `s` + 16 lowercase hex: the owner of its data key and the
/// folder of its blobs. It is internal, so a wire id chosen by someone else (a pinned `p…`
/// seen in two accounts, say) never names a key or a blob.
pub const ROW_ID_PREFIX: char = 's';

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_stored_form() {
        for kind in ResourceKind::ALL {
            assert_eq!(ResourceKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ResourceKind::parse("conversation"), None);
    }

    #[test]
    fn no_kind_shares_the_conversation_or_row_prefix() {
        for kind in ResourceKind::ALL {
            assert_ne!(kind.id_prefix(), 'c');
            assert_ne!(kind.id_prefix(), ROW_ID_PREFIX);
        }
    }
}
