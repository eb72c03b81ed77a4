//! What a conversation takes from its persona and replica, owned: a stock one's or a stored one's.

use serde::{Deserialize, Serialize};

use crate::registry::{self, Persona, Replica};

/// The persona as the simulated replica uses it: its words and whether it perceives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonaProfile {
    pub id: String,
    pub name: String,
    /// The first entry of every transcript (empty for an echo persona without one).
    #[serde(default)]
    pub system_prompt: String,
    /// The persona's own context, which the transcript adds after the system prompt.
    #[serde(default)]
    pub context: Option<String>,
    /// What the replica says first when the conversation sets no `custom_greeting`.
    #[serde(default)]
    pub greeting: Option<String>,
    /// The replica a create request that names none uses.
    #[serde(default)]
    pub default_replica_id: Option<String>,
    /// The perception model, when perception is on.
    #[serde(default)]
    pub perception_model: Option<String>,
}

/// What the replica says first when neither the conversation nor the persona says.
pub const FALLBACK_GREETING: &str = "Hello! Nice to meet you.";

impl PersonaProfile {
    /// The greeting, or [`FALLBACK_GREETING`] when the persona has none.
    pub fn greeting(&self) -> &str {
        self.greeting
            .as_deref()
            .filter(|g| !g.is_empty())
            .unwrap_or(FALLBACK_GREETING)
    }

    /// Whether this is a stock persona of the built-in registry, which a stored conversation can
    /// find again by id alone.
    pub fn is_stock(&self) -> bool {
        registry::persona(&self.id).is_some_and(|p| PersonaProfile::from(p) == *self)
    }
}

impl From<&'static Persona> for PersonaProfile {
    fn from(p: &'static Persona) -> Self {
        Self {
            id: p.id.to_owned(),
            name: p.name.to_owned(),
            system_prompt: p.system_prompt.to_owned(),
            context: None,
            greeting: Some(p.greeting.to_owned()),
            default_replica_id: Some(p.default_replica_id.to_owned()),
            perception_model: p.perception_model.map(str::to_owned),
        }
    }
}

/// The replica a conversation runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaProfile {
    pub id: String,
    pub name: String,
}

impl ReplicaProfile {
    /// Whether this is a stock replica of the built-in registry.
    pub fn is_stock(&self) -> bool {
        registry::replica(&self.id).is_some_and(|r| ReplicaProfile::from(r) == *self)
    }
}

impl From<&'static Replica> for ReplicaProfile {
    fn from(r: &'static Replica) -> Self {
        Self {
            id: r.id.to_owned(),
            name: r.name.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_profiles_say_so_and_stored_ones_do_not() {
        let stock = PersonaProfile::from(registry::persona("pdac61133ac5").unwrap());
        assert!(stock.is_stock());
        let mut changed = stock.clone();
        changed.system_prompt = "Something else".into();
        assert!(!changed.is_stock());
        let replica = ReplicaProfile::from(registry::replica("rfe12d8b9597").unwrap());
        assert!(replica.is_stock());
    }

    #[test]
    fn a_persona_without_a_greeting_uses_the_fallback() {
        let mut p = PersonaProfile::from(registry::persona("pdced222244b").unwrap());
        p.greeting = None;
        assert_eq!(p.greeting(), FALLBACK_GREETING);
        p.greeting = Some(String::new());
        assert_eq!(p.greeting(), FALLBACK_GREETING);
    }
}
