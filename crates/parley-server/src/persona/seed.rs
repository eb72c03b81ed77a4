//! The seed file: personas and replicas, with ids, that exist for every account.
//!
//! ```json
//! {"personas": [{"persona_id": "p…", "persona_name": "…", "system_prompt": "…", …}],
//!  "pals":     [{"pal_id": "p…", "pal_name": "…", "default_face_id": "r…", …}],
//!  "replicas": [{"replica_id": "r…", "replica_name": "…", …}]}
//! ```
//!
//! Each entry is stored as the account's own on its first use (see `persona::find_persona`),
//! so it reads, patches and deletes like one the account created.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use parley_domain::{ResourceKind, registry};
use serde_json::{Map, Value, json};

use super::fields::{self, View};
use super::well_formed;

/// The seeded entries, by id: stored fields, as a create would store them.
#[derive(Debug, Clone, Default)]
pub struct Seed {
    pub personas: HashMap<String, Map<String, Value>>,
    pub replicas: HashMap<String, Map<String, Value>>,
}

impl Seed {
    /// Reads and checks a seed file; `accept_unknown_ids` lets a persona's default replica be any
    /// well-formed id, as it may be in a create.
    pub fn load(path: &Path, accept_unknown_ids: bool) -> anyhow::Result<Self> {
        let raw = std::fs::read(path).with_context(|| format!("reading the seed file {}", path.display()))?;
        Self::parse(&raw, accept_unknown_ids).with_context(|| format!("in the seed file {}", path.display()))
    }

    /// Parses a seed file's contents.
    pub fn parse(raw: &[u8], accept_unknown_ids: bool) -> anyhow::Result<Self> {
        let Value::Object(top) = serde_json::from_slice(raw).context("not JSON")? else {
            bail!("expected an object with \"personas\", \"pals\" and \"replicas\" lists");
        };
        let mut seed = Self::default();
        for (key, entries) in top {
            let (kind, view) = match key.as_str() {
                "personas" => (ResourceKind::Persona, Some(View::Persona)),
                "pals" => (ResourceKind::Persona, Some(View::Pal)),
                "replicas" => (ResourceKind::Replica, None),
                other => bail!("unknown key {other:?}: expected personas, pals or replicas"),
            };
            let Value::Array(entries) = entries else {
                bail!("{key}: expected a list");
            };
            for (n, entry) in entries.into_iter().enumerate() {
                let Value::Object(mut entry) = entry else {
                    bail!("{key}[{n}]: expected an object");
                };
                let id_key = view.map_or("replica_id", View::id_key);
                let id = match entry.remove(id_key) {
                    Some(Value::String(id)) => id,
                    _ => bail!("{key}[{n}]: {id_key} is missing or not a string"),
                };
                ensure!(
                    well_formed(kind, &id),
                    "{key}[{n}]: {id_key} {id:?} is not {} followed by 6 to 32 lowercase letters and digits",
                    kind.id_prefix()
                );
                let stock = match kind {
                    ResourceKind::Persona => registry::persona(&id).is_some(),
                    _ => registry::replica(&id).is_some(),
                };
                ensure!(!stock, "{key}[{n}]: {id} is a stock id");
                let stored = match view {
                    Some(view) => {
                        fields::to_stored(view, entry).map_err(|e| anyhow::anyhow!("{key}[{n}]: {e}"))?
                    }
                    None => {
                        entry.entry("replica_name").or_insert_with(|| json!(id.clone()));
                        entry
                            .entry("model_name")
                            .or_insert_with(|| json!(super::DEFAULT_REPLICA_MODEL));
                        entry
                    }
                };
                let into = match kind {
                    ResourceKind::Persona => &mut seed.personas,
                    _ => &mut seed.replicas,
                };
                ensure!(
                    into.insert(id.clone(), stored).is_none(),
                    "{key}[{n}]: {id} is seeded twice"
                );
            }
        }
        for (id, stored) in &seed.personas {
            if let Some(replica) = fields::text(stored, "default_replica_id") {
                let usable = registry::replica(replica).is_some()
                    || seed.replicas.contains_key(replica)
                    || (accept_unknown_ids && well_formed(ResourceKind::Replica, replica));
                ensure!(
                    usable,
                    "persona {id}: its default replica {replica} is neither stock nor seeded"
                );
            }
        }
        Ok(seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_names_personas_in_either_view_and_replicas() {
        let raw = json!({
            "personas": [{"persona_id": "pseed0001", "persona_name": "A", "system_prompt": "P", "default_replica_id": "rseed0001"}],
            "pals": [{"pal_id": "pseed0002", "pal_name": "B", "pipeline_mode": "echo", "default_face_id": "rfe12d8b9597"}],
            "replicas": [{"replica_id": "rseed0001"}],
        });
        let seed = Seed::parse(raw.to_string().as_bytes(), false).unwrap();
        assert_eq!(seed.personas["pseed0001"]["persona_name"], "A");
        assert_eq!(seed.personas["pseed0002"]["persona_name"], "B");
        assert_eq!(seed.personas["pseed0002"]["default_replica_id"], "rfe12d8b9597");
        assert_eq!(seed.replicas["rseed0001"]["replica_name"], "rseed0001");
    }

    #[test]
    fn a_bad_seed_says_what_is_wrong() {
        let cases = [
            (json!([]), "expected an object"),
            (json!({"people": []}), "unknown key"),
            (
                json!({"personas": [{"persona_name": "x"}]}),
                "persona_id is missing",
            ),
            (
                json!({"personas": [{"persona_id": "P-UPPER", "system_prompt": "x"}]}),
                "is not p followed by",
            ),
            (
                json!({"personas": [{"persona_id": "pdced222244b", "system_prompt": "x"}]}),
                "stock id",
            ),
            (
                json!({"personas": [{"persona_id": "pseed0001"}]}),
                "Invalid system_prompt",
            ),
            (
                json!({"replicas": [{"replica_id": "rseed0001"}, {"replica_id": "rseed0001"}]}),
                "seeded twice",
            ),
            (
                json!({"personas": [{"persona_id": "pseed0001", "system_prompt": "x", "default_replica_id": "rnowhere1"}]}),
                "neither stock nor seeded",
            ),
        ];
        for (raw, wanted) in cases {
            let e = format!(
                "{:#}",
                Seed::parse(raw.to_string().as_bytes(), false).unwrap_err()
            );
            assert!(e.contains(wanted), "{raw}: {e}");
        }
        // With unknown ids accepted, any well-formed default replica will do.
        let raw = json!({"personas": [{"persona_id": "pseed0001", "system_prompt": "x", "default_replica_id": "rnowhere1"}]});
        assert!(Seed::parse(raw.to_string().as_bytes(), true).is_ok());
    }
}
