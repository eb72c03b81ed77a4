//! The create-conversation request: parsing with field-named errors, defaults and validation.

use serde::{Deserialize, Deserializer, Serialize};

use crate::profile::{PersonaProfile, ReplicaProfile};
use crate::registry;

/// A request that cannot be accepted; the message is the wire `error` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

impl ValidationError {
    fn field(name: &str, why: impl std::fmt::Display) -> Self {
        Self(format!("Invalid {name}: {why}"))
    }
}

/// The create body as documented; unknown fields are ignored, absent or `null` ones are `None`.
///
/// Re-serialised (without the `None`s) it is what the store keeps of the request.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct CreateConversation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persona_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pal_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub audio_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversational_context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_greeting: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_stores: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_retrieval_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_tags: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "lenient_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub test_mode: Option<bool>,
    #[serde(
        default,
        deserialize_with = "lenient_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub require_auth: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_participants: Option<u32>,
    #[serde(
        default,
        deserialize_with = "lenient_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_dynamic_greeting: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meeting_url: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub chat: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Properties>,
}

/// The `properties` object of a create request.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct Properties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_call_duration: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant_left_timeout: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant_absent_timeout: Option<u32>,
    #[serde(
        default,
        deserialize_with = "lenient_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_recording: Option<bool>,
    #[serde(
        default,
        deserialize_with = "lenient_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_closed_captions: Option<bool>,
    /// Legacy name of `enable_closed_captions`, still sent by older clients.
    #[serde(
        default,
        deserialize_with = "lenient_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_transcription: Option<bool>,
    #[serde(
        default,
        deserialize_with = "lenient_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub apply_greenscreen: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub languages: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_s3_bucket_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_s3_bucket_region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_assume_role_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_storage: Option<serde_json::Map<String, serde_json::Value>>,
    /// Its schema is not public: a room URL or an object, kept as sent (checked in `validate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_room: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub livekit_ws_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub livekit_room_token: Option<String>,
}

/// Where a call's participants meet the replica.
///
/// parley simulates media for none of them; the difference is who can join. In its own room
/// (`conversation_url`) people join through parley; on the others they would join elsewhere,
/// where parley cannot see them, so no absent timer runs (see `docs/API.md`, Timers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// parley's room page at `conversation_url`.
    Room,
    /// An external meeting (`meeting_url`): Meet, Zoom, Teams.
    MeetingUrl,
    /// A LiveKit room (`properties.livekit_ws_url`, `properties.livekit_room_token`).
    LiveKit,
    /// The caller's own Daily room (`properties.daily_room`).
    DailyRoom,
}

impl Transport {
    /// The name the room state shows.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Room => "room",
            Self::MeetingUrl => "meeting_url",
            Self::LiveKit => "livekit",
            Self::DailyRoom => "daily_room",
        }
    }

    /// Whether people join the call somewhere other than parley's room.
    pub const fn is_external(self) -> bool {
        !matches!(self, Self::Room)
    }

    /// The transport of a stored request (`Conversation::request_json`); unreadable means the room.
    pub fn of_request_json(raw: &str) -> Self {
        serde_json::from_str::<CreateConversation>(raw).map_or(Self::Room, |r| r.transports()[0].0)
    }
}

impl CreateConversation {
    /// Parses a JSON body; a wrong type is a 400 naming the field, e.g. `Invalid properties.max_call_duration`.
    pub fn from_json(body: &[u8]) -> Result<Self, ValidationError> {
        let body = if body.iter().all(u8::is_ascii_whitespace) {
            // Every field is optional, so an empty body is an empty object.
            b"{}".as_slice()
        } else {
            body
        };
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| ValidationError(format!("Invalid JSON body: {e}")))?;
        if !value.is_object() {
            return Err(ValidationError("Invalid JSON body: expected an object".into()));
        }
        // serde would read a struct from an array; the contract wants an object.
        if value
            .get("properties")
            .is_some_and(|p| !p.is_object() && !p.is_null())
        {
            return Err(ValidationError::field("properties", "expected an object"));
        }
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            // serde's message carries a position that means nothing for an already-parsed value.
            let inner = inner.split(" at line ").next().unwrap_or_default().to_owned();
            ValidationError::field(&path, inner)
        })
    }

    /// The persona the request names (`persona_id` or its alias `pal_id`), if any.
    pub fn persona_choice(&self) -> Result<Option<&str>, ValidationError> {
        pick_alias(&self.persona_id, &self.pal_id, "persona_id", "pal_id")
    }

    /// The replica the request names (`replica_id` or its alias `face_id`), if any.
    pub fn replica_choice(&self) -> Result<Option<&str>, ValidationError> {
        pick_alias(&self.replica_id, &self.face_id, "replica_id", "face_id")
    }

    /// Every transport the request names, with the field that names it; `Room` alone if none.
    fn transports(&self) -> Vec<(Transport, &'static str)> {
        let props = self.properties.as_ref();
        let mut found = Vec::new();
        if self.meeting_url.is_some() {
            found.push((Transport::MeetingUrl, "meeting_url"));
        }
        if props.is_some_and(|p| p.livekit_ws_url.is_some()) {
            found.push((Transport::LiveKit, "properties.livekit_ws_url"));
        } else if props.is_some_and(|p| p.livekit_room_token.is_some()) {
            found.push((Transport::LiveKit, "properties.livekit_room_token"));
        }
        if props.is_some_and(|p| p.daily_room.is_some()) {
            found.push((Transport::DailyRoom, "properties.daily_room"));
        }
        if found.is_empty() {
            found.push((Transport::Room, "conversation_url"));
        }
        found
    }
}

/// Booleans that also arrive as strings: the official OpenAPI example sends `audio_only: 'false'`.
fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Str(String),
    }
    match Option::<Raw>::deserialize(d) {
        Ok(None) => Ok(None),
        Ok(Some(Raw::Bool(b))) => Ok(Some(b)),
        Ok(Some(Raw::Str(s))) => parse_bool(&s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("expected a boolean, got {s:?}"))),
        Err(_) => Err(serde::de::Error::custom("expected a boolean")),
    }
}

/// Parses `true`/`false`/`1`/`0` in any case.
pub fn parse_bool(raw: &str) -> Option<bool> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Server-side limits that shape a new conversation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The highest `max_call_duration` honoured; larger values are capped to it.
    pub max_call_duration_cap: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_call_duration_cap: 3600,
        }
    }
}

/// A validated create request, with defaults filled in.
#[derive(Debug, Clone)]
pub struct NewConversation {
    pub replica: ReplicaProfile,
    pub persona: PersonaProfile,
    pub request: CreateConversation,
    pub test_mode: bool,
    pub require_auth: bool,
    pub enable_recording: bool,
    pub max_call_duration: u32,
    pub participant_left_timeout: u32,
    pub participant_absent_timeout: u32,
    /// Where people join; only parley's own room runs the absent timer.
    pub transport: Transport,
}

/// The key of a stored request (`request_json`) under which a conversation keeps what it uses of
/// a persona that is not stock, so its transcript does not depend on the persona staying as it was.
pub const PERSONA_SNAPSHOT: &str = "persona_snapshot";
/// The same for a replica that is not stock.
pub const REPLICA_SNAPSHOT: &str = "replica_snapshot";

impl NewConversation {
    /// Parses a JSON body naming stock personas and replicas only (the server also resolves the
    /// account's own: see [`CreateConversation::from_json`] and [`NewConversation::validate`]).
    pub fn from_json(body: &[u8], limits: Limits) -> Result<Self, ValidationError> {
        let request = CreateConversation::from_json(body)?;
        let persona = request.persona_choice()?.unwrap_or(registry::DEFAULT_PERSONA_ID);
        let persona =
            registry::persona(persona).ok_or_else(|| ValidationError("Invalid persona_id".into()))?;
        let replica = request.replica_choice()?.unwrap_or(persona.default_replica_id);
        let replica =
            registry::replica(replica).ok_or_else(|| ValidationError("Invalid replica_id".into()))?;
        Self::validate(request, limits, persona.into(), replica.into())
    }

    /// Applies the rules the types cannot express, to a request whose persona and replica are
    /// already found.
    pub fn validate(
        request: CreateConversation,
        limits: Limits,
        persona: PersonaProfile,
        replica: ReplicaProfile,
    ) -> Result<Self, ValidationError> {
        for (name, value) in [
            ("callback_url", &request.callback_url),
            ("meeting_url", &request.meeting_url),
        ] {
            if let Some(raw) = value {
                check_http_url(name, raw)?;
            }
        }
        let transport = check_transport(&request)?;
        if let Some(strategy) = &request.document_retrieval_strategy
            && !matches!(strategy.as_str(), "speed" | "quality" | "balanced")
        {
            return Err(ValidationError::field(
                "document_retrieval_strategy",
                "expected one of speed, quality, balanced",
            ));
        }
        if let Some(n) = request.max_participants
            && n < 2
        {
            return Err(ValidationError::field("max_participants", "must be at least 2"));
        }
        let props = request.properties.clone().unwrap_or_default();
        if props.max_call_duration == Some(0) {
            return Err(ValidationError::field(
                "properties.max_call_duration",
                "must be at least 1",
            ));
        }
        Ok(Self {
            replica,
            persona,
            test_mode: request.test_mode.unwrap_or(false),
            require_auth: request.require_auth.unwrap_or(false),
            enable_recording: props.enable_recording.unwrap_or(false),
            max_call_duration: props
                .max_call_duration
                .unwrap_or(3600)
                .min(limits.max_call_duration_cap),
            participant_left_timeout: props.participant_left_timeout.unwrap_or(0),
            participant_absent_timeout: props.participant_absent_timeout.unwrap_or(300),
            transport,
            request,
        })
    }

    /// The stored form of the request: the known fields, as sent, and a snapshot of a persona or
    /// replica that is not stock (stock ones are found again by id).
    pub fn request_json(&self) -> String {
        let mut stored =
            serde_json::to_value(&self.request).expect("a struct of strings, numbers and maps serialises");
        if let serde_json::Value::Object(fields) = &mut stored {
            if !self.persona.is_stock() {
                fields.insert(PERSONA_SNAPSHOT.into(), serde_json::json!(self.persona));
            }
            if !self.replica.is_stock() {
                fields.insert(REPLICA_SNAPSHOT.into(), serde_json::json!(self.replica));
            }
        }
        stored.to_string()
    }
}

/// A snapshot kept in a stored request under `key`, if there is a readable one.
pub fn snapshot_of<T: serde::de::DeserializeOwned>(request_json: &str, key: &str) -> Option<T> {
    let stored: serde_json::Value = serde_json::from_str(request_json).ok()?;
    serde_json::from_value(stored.get(key)?.clone()).ok()
}

fn pick_alias<'a>(
    legacy: &'a Option<String>,
    alias: &'a Option<String>,
    legacy_name: &str,
    alias_name: &str,
) -> Result<Option<&'a str>, ValidationError> {
    match (legacy.as_deref(), alias.as_deref()) {
        (Some(a), Some(b)) if a != b => Err(ValidationError(format!(
            "Invalid {legacy_name}: {legacy_name} and {alias_name} name different ids"
        ))),
        (Some(a), _) => Ok(Some(a)),
        (None, b) => Ok(b),
    }
}

/// One transport at most, each with fields of the right shape.
fn check_transport(request: &CreateConversation) -> Result<Transport, ValidationError> {
    let found = request.transports();
    if let [(_, first), (_, second), ..] = found.as_slice() {
        return Err(ValidationError::field(
            second,
            format!("a conversation has one transport, and {first} already names one"),
        ));
    }
    if let Some(props) = &request.properties {
        if let Some(raw) = &props.livekit_ws_url {
            let url =
                url::Url::parse(raw).map_err(|e| ValidationError::field("properties.livekit_ws_url", e))?;
            if !matches!(url.scheme(), "ws" | "wss" | "http" | "https") || url.host_str().is_none() {
                return Err(ValidationError::field(
                    "properties.livekit_ws_url",
                    "expected a ws, wss, http or https URL",
                ));
            }
        }
        if props.livekit_room_token.as_deref() == Some("") {
            return Err(ValidationError::field(
                "properties.livekit_room_token",
                "must not be empty",
            ));
        }
        // Its schema is not public: a room URL or an object of settings, kept as sent.
        if let Some(room) = &props.daily_room
            && !(room.is_string() || room.is_object())
        {
            return Err(ValidationError::field(
                "properties.daily_room",
                "expected a Daily room URL or an object",
            ));
        }
    }
    Ok(found[0].0)
}

fn check_http_url(name: &str, raw: &str) -> Result<(), ValidationError> {
    let url = url::Url::parse(raw).map_err(|e| ValidationError::field(name, e))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ValidationError::field(name, "expected an http or https URL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<NewConversation, ValidationError> {
        NewConversation::from_json(body.as_bytes(), Limits::default())
    }

    #[test]
    fn an_empty_body_uses_the_default_persona_and_its_replica() {
        let c = parse("").unwrap();
        assert_eq!(c.persona.id, registry::DEFAULT_PERSONA_ID);
        assert_eq!(Some(&c.replica.id), c.persona.default_replica_id.as_ref());
        assert_eq!(c.max_call_duration, 3600);
        assert_eq!(c.participant_absent_timeout, 300);
        assert_eq!(c.participant_left_timeout, 0);
    }

    #[test]
    fn pal_and_face_are_aliases() {
        let c = parse(r#"{"pal_id":"pdac61133ac5","face_id":"rf4e9d9790f0"}"#).unwrap();
        assert_eq!(c.persona.id, "pdac61133ac5");
        assert_eq!(c.replica.id, "rf4e9d9790f0");
    }

    #[test]
    fn conflicting_aliases_are_rejected() {
        let e = parse(r#"{"persona_id":"pdac61133ac5","pal_id":"pdced222244b"}"#).unwrap_err();
        assert!(e.0.starts_with("Invalid persona_id"), "{e}");
    }

    #[test]
    fn unknown_ids_name_the_field() {
        assert_eq!(
            parse(r#"{"replica_id":"r000000"}"#).unwrap_err().0,
            "Invalid replica_id"
        );
        assert_eq!(
            parse(r#"{"persona_id":"p000000"}"#).unwrap_err().0,
            "Invalid persona_id"
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = parse(r#"{"properties":{"max_call_duration":"long"}}"#).unwrap_err();
        assert!(e.0.starts_with("Invalid properties.max_call_duration:"), "{e}");
        let e = parse(r#"{"conversation_name":5}"#).unwrap_err();
        assert!(e.0.starts_with("Invalid conversation_name:"), "{e}");
        let e = parse(r#"{"memory_stores":[1]}"#).unwrap_err();
        assert!(e.0.starts_with("Invalid memory_stores"), "{e}");
    }

    #[test]
    fn string_booleans_are_accepted() {
        let c = parse(r#"{"audio_only":"false","test_mode":"TRUE"}"#).unwrap();
        assert_eq!(c.request.audio_only, Some(false));
        assert!(c.test_mode);
        assert!(
            parse(r#"{"test_mode":"maybe"}"#)
                .unwrap_err()
                .0
                .starts_with("Invalid test_mode")
        );
    }

    #[test]
    fn malformed_json_and_non_objects_are_rejected() {
        assert!(parse("{").unwrap_err().0.starts_with("Invalid JSON body"));
        assert!(parse("[]").unwrap_err().0.starts_with("Invalid JSON body"));
    }

    #[test]
    fn unknown_fields_are_ignored_and_not_stored() {
        let c = parse(r#"{"surprise":1,"conversation_name":"x"}"#).unwrap();
        assert_eq!(c.request_json(), r#"{"conversation_name":"x"}"#);
    }

    #[test]
    fn a_stored_persona_and_replica_are_kept_with_the_request_and_stock_ones_are_not() {
        let persona = PersonaProfile {
            id: "p0123456789abcdef".into(),
            name: "Own".into(),
            system_prompt: "Be brief.".into(),
            context: Some("ctx".into()),
            greeting: None,
            default_replica_id: None,
            perception_model: None,
        };
        let replica = ReplicaProfile {
            id: "r0123456789abcdef".into(),
            name: "Mine".into(),
        };
        let request = CreateConversation::from_json(br#"{"conversation_name":"x"}"#).unwrap();
        let c =
            NewConversation::validate(request, Limits::default(), persona.clone(), replica.clone()).unwrap();
        let stored = c.request_json();
        assert_eq!(
            snapshot_of::<PersonaProfile>(&stored, PERSONA_SNAPSHOT),
            Some(persona)
        );
        assert_eq!(
            snapshot_of::<ReplicaProfile>(&stored, REPLICA_SNAPSHOT),
            Some(replica)
        );
        // The request itself still reads back as it was sent.
        let again: CreateConversation = serde_json::from_str(&stored).unwrap();
        assert_eq!(again.conversation_name.as_deref(), Some("x"));
        let stock = parse(r#"{"conversation_name":"x"}"#).unwrap().request_json();
        assert_eq!(snapshot_of::<PersonaProfile>(&stock, PERSONA_SNAPSHOT), None);
    }

    #[test]
    fn long_calls_are_capped() {
        let c = parse(r#"{"properties":{"max_call_duration":99999}}"#).unwrap();
        assert_eq!(c.max_call_duration, 3600);
    }

    #[test]
    fn callback_urls_must_be_http() {
        assert!(
            parse(r#"{"callback_url":"ftp://x"}"#)
                .unwrap_err()
                .0
                .starts_with("Invalid callback_url")
        );
        assert!(
            parse(r#"{"callback_url":"not a url"}"#)
                .unwrap_err()
                .0
                .starts_with("Invalid callback_url")
        );
        assert!(parse(r#"{"callback_url":"http://127.0.0.1:9/hook"}"#).is_ok());
    }

    #[test]
    fn the_transport_comes_from_meeting_url_livekit_or_daily_room() {
        assert_eq!(parse("").unwrap().transport, Transport::Room);
        let c = parse(r#"{"meeting_url":"https://meet.example/abc"}"#).unwrap();
        assert_eq!(c.transport, Transport::MeetingUrl);
        let c = parse(r#"{"properties":{"livekit_ws_url":"wss://lk.example","livekit_room_token":"jwt"}}"#)
            .unwrap();
        assert_eq!(c.transport, Transport::LiveKit);
        assert_eq!(Transport::of_request_json(&c.request_json()), Transport::LiveKit);
        let c = parse(r#"{"properties":{"daily_room":"https://me.daily.co/room","daily_room_token":1}}"#)
            .unwrap();
        assert_eq!(c.transport, Transport::DailyRoom);
        assert_eq!(
            parse(r#"{"properties":{"daily_room":null}}"#).unwrap().transport,
            Transport::Room
        );
        assert_eq!(Transport::of_request_json(""), Transport::Room);
    }

    #[test]
    fn transport_fields_of_the_wrong_shape_name_the_field() {
        let e = parse(r#"{"properties":{"livekit_ws_url":5}}"#).unwrap_err();
        assert!(e.0.starts_with("Invalid properties.livekit_ws_url:"), "{e}");
        let e = parse(r#"{"properties":{"livekit_ws_url":"ftp://lk.example"}}"#).unwrap_err();
        assert!(e.0.starts_with("Invalid properties.livekit_ws_url:"), "{e}");
        let e = parse(r#"{"properties":{"livekit_room_token":["a"]}}"#).unwrap_err();
        assert!(e.0.starts_with("Invalid properties.livekit_room_token:"), "{e}");
        let e = parse(r#"{"properties":{"livekit_room_token":""}}"#).unwrap_err();
        assert!(e.0.starts_with("Invalid properties.livekit_room_token:"), "{e}");
        let e = parse(r#"{"properties":{"daily_room":7}}"#).unwrap_err();
        assert!(e.0.starts_with("Invalid properties.daily_room:"), "{e}");
        let e = parse(r#"{"meeting_url":true}"#).unwrap_err();
        assert!(e.0.starts_with("Invalid meeting_url:"), "{e}");
    }

    #[test]
    fn two_transports_are_rejected() {
        let e = parse(r#"{"meeting_url":"https://meet.example/abc","properties":{"livekit_ws_url":"wss://lk.example"}}"#)
            .unwrap_err();
        assert!(e.0.starts_with("Invalid properties.livekit_ws_url:"), "{e}");
        assert!(e.0.contains("meeting_url"), "{e}");
    }
}
