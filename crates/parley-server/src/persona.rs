//! Finding personas and replicas by id: stock, the account's own, seeded, or pinned ids made on first use.
//!
//! A conversation and the persona routes resolve ids the same way, in this order: the built-in
//! registry (stock, `system`); the account's own stored row; a seed file entry; with
//! `--accept-unknown-ids`, any well-formed id. The last two are stored as the account's own the
//! first time they are used, so they then read, patch and delete like one the account created.
//! Anything else (unknown, another account's, deleted) is not found, and every caller answers
//! that the same way.

pub mod fields;
pub mod seed;

use std::sync::Arc;

use parley_domain::{
    CreateConversation, PersonaProfile, ReplicaProfile, ResourceKind, ValidationError, registry,
};
use parley_store::StoreError;
use serde_json::{Map, Value, json};

pub use fields::View;
pub use seed::Seed;

use crate::resources::{self, NewResource, Opened};
use crate::service::ServiceError;
use crate::state::AppState;

type Result<T> = std::result::Result<T, ServiceError>;

/// How ids the account has not stored are treated.
#[derive(Debug, Clone, Default)]
pub struct PersonaSettings {
    /// Any well-formed persona or replica id is the account's own, made on first use.
    pub accept_unknown_ids: bool,
    /// Entries that exist for every account, made on first use with their seeded fields.
    pub seed: Arc<Seed>,
}

/// The status of a stored persona, and of a replica made on first use: ready to be used.
pub const PERSONA_STATUS: &str = "ready";
/// The stored status of a replica made on first use. The replica routes work out what clients
/// read from its creation time, as for any replica the account created.
pub const REPLICA_STATUS: &str = "started";

/// Whether `id` is a well-formed id of `kind` for a pinned or seeded entry: its prefix (`p`,
/// `r`) and 6 to 32 lowercase letters and digits. Hosted ids (`p` + 11 hex, older `p` + 7)
/// and parley's own (`p` + 16 hex) all are.
pub fn well_formed(kind: ResourceKind, id: &str) -> bool {
    let mut chars = id.chars();
    chars.next() == Some(kind.id_prefix())
        && (6..=32).contains(&chars.clone().count())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// Whether `id` could name anything at all: a lookup of anything else would find nothing, so
/// it does not reach storage (a 10,000-character path segment, say).
pub fn plausible(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A persona an id names.
#[derive(Debug, Clone)]
pub enum Persona {
    Stock(&'static registry::Persona),
    /// The account's own, its fields readable.
    Own(Box<Opened>),
}

/// A replica an id names.
#[derive(Debug, Clone)]
pub enum Replica {
    Stock(&'static registry::Replica),
    /// The account's own, not deleted.
    Own(Box<Opened>),
}

/// An id that names something: already there, or an entry to store on its first use.
#[derive(Debug, Clone)]
pub enum Found<T> {
    Here(T),
    FirstUse(NewResource),
}

impl Persona {
    /// What a conversation takes from it.
    pub fn profile(&self) -> PersonaProfile {
        match self {
            Self::Stock(p) => PersonaProfile::from(*p),
            Self::Own(opened) => stored_persona_profile(&opened.row.id, opened.fields.as_ref()),
        }
    }
}

impl Replica {
    /// What a conversation takes from it.
    pub fn profile(&self) -> ReplicaProfile {
        match self {
            Self::Stock(r) => ReplicaProfile::from(*r),
            Self::Own(opened) => stored_replica_profile(&opened.row.id, opened.fields.as_ref()),
        }
    }
}

fn stored_persona_profile(id: &str, stored: Option<&Map<String, Value>>) -> PersonaProfile {
    let empty = Map::new();
    let f = stored.unwrap_or(&empty);
    let text = |key| fields::text(f, key).map(str::to_owned);
    PersonaProfile {
        id: id.to_owned(),
        name: text("persona_name").unwrap_or_else(|| id.to_owned()),
        system_prompt: text("system_prompt").unwrap_or_default(),
        context: text("context"),
        greeting: text("greeting"),
        default_replica_id: text("default_replica_id"),
        perception_model: fields::perception_model(f).map(str::to_owned),
    }
}

fn stored_replica_profile(id: &str, stored: Option<&Map<String, Value>>) -> ReplicaProfile {
    let name = stored.and_then(|f| fields::text(f, "replica_name").or_else(|| fields::text(f, "face_name")));
    ReplicaProfile {
        id: id.to_owned(),
        name: name.unwrap_or("Replica").to_owned(),
    }
}

/// The fields a pinned persona starts with: a plain assistant on the default persona's replica,
/// so a conversation with it alone works.
fn ad_hoc_persona(id: &str) -> Map<String, Value> {
    let default = registry::persona(registry::DEFAULT_PERSONA_ID)
        .expect("the default persona is in the built-in registry");
    let fields = json!({
        "persona_name": id,
        "system_prompt": "You are a helpful assistant on a video call.",
        "default_replica_id": default.default_replica_id,
    });
    match fields {
        Value::Object(fields) => fields,
        _ => unreachable!("a JSON object literal"),
    }
}

/// The fields a pinned replica starts with: what the replica routes show of one created there.
fn ad_hoc_replica(id: &str) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("replica_name".into(), json!(id));
    fields.insert("model_name".into(), json!(DEFAULT_REPLICA_MODEL));
    fields
}

/// The model a pinned or seeded replica names unless it says otherwise (the replica routes' default).
pub const DEFAULT_REPLICA_MODEL: &str = "phoenix-4";

/// Where `id` leads for the account, without writing anything.
pub async fn find_persona(state: &AppState, account: &str, id: &str) -> Result<Option<Found<Persona>>> {
    if let Some(stock) = registry::persona(id) {
        return Ok(Some(Found::Here(Persona::Stock(stock))));
    }
    if !plausible(id) {
        return Ok(None);
    }
    if let Some(opened) = resources::get(state, account, ResourceKind::Persona, id).await? {
        // A row whose content is unavailable (its key gone) is no persona to use.
        return Ok(opened
            .fields
            .is_some()
            .then_some(Found::Here(Persona::Own(Box::new(opened)))));
    }
    let settings = &state.settings.personas;
    let fields = match settings.seed.personas.get(id) {
        Some(seeded) => seeded.clone(),
        None if settings.accept_unknown_ids && well_formed(ResourceKind::Persona, id) => ad_hoc_persona(id),
        None => return Ok(None),
    };
    Ok(Some(Found::FirstUse(NewResource {
        kind: ResourceKind::Persona,
        id: Some(id.to_owned()),
        status: PERSONA_STATUS.into(),
        fields,
        work_at: None,
    })))
}

/// Where a replica id leads for the account, without writing anything.
pub async fn find_replica(state: &AppState, account: &str, id: &str) -> Result<Option<Found<Replica>>> {
    if let Some(stock) = registry::replica(id) {
        return Ok(Some(Found::Here(Replica::Stock(stock))));
    }
    if !plausible(id) {
        return Ok(None);
    }
    if let Some(opened) = resources::get(state, account, ResourceKind::Replica, id).await? {
        return Ok(opened
            .fields
            .is_some()
            .then_some(Found::Here(Replica::Own(Box::new(opened)))));
    }
    let settings = &state.settings.personas;
    let fields = match settings.seed.replicas.get(id) {
        Some(seeded) => seeded.clone(),
        None if settings.accept_unknown_ids && well_formed(ResourceKind::Replica, id) => ad_hoc_replica(id),
        None => return Ok(None),
    };
    Ok(Some(Found::FirstUse(NewResource {
        kind: ResourceKind::Replica,
        id: Some(id.to_owned()),
        status: REPLICA_STATUS.into(),
        fields,
        work_at: None,
    })))
}

/// Stores a seeded or pinned entry on its first use; `None` if it cannot be used after all (a
/// soft-deleted replica holds the id).
///
/// Two first uses at once both try; the one that loses gets a `Conflict` and reads what the
/// other stored.
pub async fn first_use(state: &AppState, account: &str, new: NewResource) -> Result<Option<Opened>> {
    let kind = new.kind;
    let id = new.id.clone().expect("a first use is of a pinned id");
    match resources::create(state, account, new).await {
        Ok(opened) => {
            tracing::info!(resource.kind = kind.as_str(), resource.id = %id, account, "stored on first use");
            Ok(Some(opened))
        }
        Err(ServiceError::Store(StoreError::Conflict(_))) => Ok(resources::get(state, account, kind, &id)
            .await?
            .filter(|opened| opened.fields.is_some())),
        Err(e) => Err(e),
    }
}

/// The persona `id` names for the account, stored first if this is its first use.
pub async fn persona(state: &AppState, account: &str, id: &str) -> Result<Option<Persona>> {
    Ok(match find_persona(state, account, id).await? {
        None => None,
        Some(Found::Here(p)) => Some(p),
        Some(Found::FirstUse(new)) => first_use(state, account, new)
            .await?
            .map(|opened| Persona::Own(Box::new(opened))),
    })
}

/// The replica `id` names for the account, stored first if this is its first use.
pub async fn replica(state: &AppState, account: &str, id: &str) -> Result<Option<Replica>> {
    Ok(match find_replica(state, account, id).await? {
        None => None,
        Some(Found::Here(r)) => Some(r),
        Some(Found::FirstUse(new)) => first_use(state, account, new)
            .await?
            .map(|opened| Replica::Own(Box::new(opened))),
    })
}

/// The persona and replica of a create-conversation request, and the first uses to store once
/// the rest of the request is found good.
#[derive(Debug)]
pub struct Cast {
    pub persona: PersonaProfile,
    pub replica: ReplicaProfile,
    pub first_uses: Vec<NewResource>,
}

fn invalid(text: &str) -> ServiceError {
    ServiceError::Validation(ValidationError(text.to_owned()))
}

/// Finds the persona (default: the registry's default) and replica (default: the persona's) a
/// create request names, for the account.
pub async fn cast_of(state: &AppState, account: &str, request: &CreateConversation) -> Result<Cast> {
    let persona_id = request.persona_choice()?.unwrap_or(registry::DEFAULT_PERSONA_ID);
    let mut first_uses = Vec::new();
    let persona = match find_persona(state, account, persona_id).await? {
        None => return Err(invalid("Invalid persona_id")),
        Some(Found::Here(p)) => p.profile(),
        Some(Found::FirstUse(new)) => {
            let profile = stored_persona_profile(persona_id, Some(&new.fields));
            first_uses.push(new);
            profile
        }
    };
    let replica_id = match request.replica_choice()? {
        Some(id) => id.to_owned(),
        None => persona.default_replica_id.clone().ok_or_else(|| {
            invalid("Invalid replica_id: the persona has no default replica; name a replica_id (or face_id)")
        })?,
    };
    let replica = match find_replica(state, account, &replica_id).await? {
        None => return Err(invalid("Invalid replica_id")),
        Some(Found::Here(r)) => r.profile(),
        Some(Found::FirstUse(new)) => {
            let profile = stored_replica_profile(&replica_id, Some(&new.fields));
            first_uses.push(new);
            profile
        }
    };
    Ok(Cast {
        persona,
        replica,
        first_uses,
    })
}

/// Stores a cast's first uses; a replica that turns out unusable (soft-deleted meanwhile) is
/// the usual `Invalid replica_id`.
pub async fn store_first_uses(state: &AppState, account: &str, first_uses: Vec<NewResource>) -> Result<()> {
    for new in first_uses {
        let kind = new.kind;
        if first_use(state, account, new).await?.is_none() {
            return Err(invalid(match kind {
                ResourceKind::Persona => "Invalid persona_id",
                _ => "Invalid replica_id",
            }));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_ids_are_the_prefix_and_6_to_32_lowercase_alphanumerics() {
        for ok in [
            "p1fec29e7f23",
            "p5317866",
            "pabcdef",
            "p0123456789abcdef",
            "r4067604db72",
        ] {
            let kind = if ok.starts_with('p') {
                ResourceKind::Persona
            } else {
                ResourceKind::Replica
            };
            assert!(well_formed(kind, ok), "{ok}");
        }
        for bad in [
            "p12345",
            "P123456",
            "p123456X",
            "p-123456",
            "r1234567",
            "",
            "p",
            &format!("p{}", "a".repeat(33)),
        ] {
            assert!(!well_formed(ResourceKind::Persona, bad), "{bad}");
        }
        assert!(!well_formed(ResourceKind::Replica, "p1234567"));
    }

    #[test]
    fn a_stored_persona_gives_its_words_and_perception_to_a_conversation() {
        let fields = json!({
            "persona_name": "Own", "system_prompt": "P", "context": "C", "greeting": "",
            "default_replica_id": "r90bbd427f71",
            "layers": {"perception": {"perception_model": "raven-1"}},
        });
        let p = stored_persona_profile("pown000001", fields.as_object());
        assert_eq!(p.name, "Own");
        assert_eq!(p.system_prompt, "P");
        assert_eq!(p.context.as_deref(), Some("C"));
        assert_eq!(p.greeting, None);
        assert_eq!(p.default_replica_id.as_deref(), Some("r90bbd427f71"));
        assert_eq!(p.perception_model.as_deref(), Some("raven-1"));
        assert_eq!(stored_persona_profile("pown000001", None).name, "pown000001");
    }
}
