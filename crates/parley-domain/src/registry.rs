//! The built-in registry of stock replicas and personas, as named in the public docs.

/// A replica (face): the likeness that joins a call.
#[derive(Debug, PartialEq, Eq)]
pub struct Replica {
    /// Wire id, `r` + hex.
    pub id: &'static str,
    /// Display name.
    pub name: &'static str,
    /// The Phoenix model it was trained on (`model_name` on the wire).
    pub model_name: &'static str,
}

/// A persona (PAL): the behaviour of the replica in a call.
#[derive(Debug, PartialEq, Eq)]
pub struct Persona {
    /// Wire id, `p` + hex.
    pub id: &'static str,
    /// Display name.
    pub name: &'static str,
    /// The persona's system prompt, the first line of every transcript.
    pub system_prompt: &'static str,
    /// What the replica says first when nobody set a `custom_greeting`.
    pub greeting: &'static str,
    /// The replica used when a create request names none.
    pub default_replica_id: &'static str,
    /// The perception model, when perception is on for this persona.
    pub perception_model: Option<&'static str>,
    /// `full`, or `echo` for personas that repeat what the client's own bot says.
    pub pipeline_mode: &'static str,
}

/// The stock replicas.
pub const REPLICAS: &[Replica] = &[
    Replica {
        id: "rfe12d8b9597",
        name: "Nathan",
        model_name: "phoenix-3",
    },
    Replica {
        id: "re8e740a42",
        name: "Nathan",
        model_name: "phoenix-2",
    },
    Replica {
        id: "r90bbd427f71",
        name: "Anna",
        model_name: "phoenix-3",
    },
    Replica {
        id: "rf4e9d9790f0",
        name: "Anna",
        model_name: "phoenix-3",
    },
    Replica {
        id: "r5dc7c7d0bcb",
        name: "Stock replica",
        model_name: "phoenix-4",
    },
    Replica {
        id: "r79e1c033f",
        name: "Stock replica",
        model_name: "phoenix-2",
    },
    Replica {
        id: "r4067604db72",
        name: "Lucy - Home",
        model_name: "phoenix-4.5",
    },
    // Named "Charlie" beside the Stock Demo Persona in the hosted API's React quickstart.
    Replica {
        id: "rf4703150052",
        name: "Charlie",
        model_name: "phoenix-3",
    },
];

/// The stock personas; `pdced222244b` is the default when a request names none.
///
/// `pipecat0` and `pipecat-stream` are the ids Pipecat's Tavus transport and video service send
/// by default: echo personas that speak with the Pipecat bot's own voice.
pub const PERSONAS: &[Persona] = &[
    Persona {
        id: "pdced222244b",
        name: "Sales Coach",
        system_prompt: "You are a friendly sales coach. Help the user sharpen their pitch with short, practical advice.",
        greeting: "Hi there! I'm your sales coach. What are you pitching today?",
        default_replica_id: "rfe12d8b9597",
        perception_model: None,
        pipeline_mode: "full",
    },
    Persona {
        id: "p24293d6",
        name: "Celebrity DJ",
        system_prompt: "You are an upbeat radio DJ. Keep the energy high and talk about music.",
        greeting: "You're live on the air! What should we spin next?",
        default_replica_id: "re8e740a42",
        perception_model: None,
        pipeline_mode: "full",
    },
    Persona {
        id: "pcb7a34da5fe",
        name: "Sales Development Rep",
        system_prompt: "You are a sales development representative. Qualify the lead politely and book a follow-up.",
        greeting: "Thanks for taking the time today. Can you tell me a little about your team?",
        default_replica_id: "rfe12d8b9597",
        perception_model: Some("raven-1"),
        pipeline_mode: "full",
    },
    Persona {
        id: "pdac61133ac5",
        name: "Interviewer",
        system_prompt: "You are a structured, fair interviewer. Ask one question at a time and listen carefully.",
        greeting: "Welcome! Shall we begin with a short introduction?",
        default_replica_id: "r90bbd427f71",
        perception_model: Some("raven-1"),
        pipeline_mode: "full",
    },
    Persona {
        id: "p1af207b8189",
        name: "Sales Coach",
        system_prompt: "You are a sales coach who role-plays difficult customers so the user can practise.",
        greeting: "Ready to practise? I'll play a tough customer.",
        default_replica_id: "rf4e9d9790f0",
        perception_model: None,
        pipeline_mode: "full",
    },
    Persona {
        id: "paaee96e4f87",
        name: "Customer Support",
        system_prompt: "You are a patient customer support agent. Resolve the user's problem step by step.",
        greeting: "Hello! How can I help you today?",
        default_replica_id: "r90bbd427f71",
        perception_model: Some("raven-1"),
        pipeline_mode: "full",
    },
    Persona {
        id: "p5317866",
        name: "Stock persona",
        system_prompt: "You are a helpful assistant on a video call.",
        greeting: "Hello! Nice to meet you.",
        default_replica_id: "r79e1c033f",
        perception_model: None,
        pipeline_mode: "full",
    },
    // The "Stock Demo Persona" of the hosted API's quickstarts (the React CVI quickstart among
    // them), used there with `r79e1c033f` or with no replica at all.
    Persona {
        id: "p9a95912",
        name: "Stock Demo Persona",
        system_prompt: "You are a friendly demo assistant on a video call. Keep your answers short.",
        greeting: "Hi! Thanks for trying the demo. What would you like to talk about?",
        default_replica_id: "r79e1c033f",
        perception_model: None,
        pipeline_mode: "full",
    },
    Persona {
        id: "pb87e71797da",
        name: "LiveKit default",
        system_prompt: "You are a helpful assistant on a video call.",
        greeting: "Hi! I'm here and ready to talk.",
        default_replica_id: "r4067604db72",
        perception_model: None,
        pipeline_mode: "full",
    },
    Persona {
        id: "pipecat0",
        name: "Pipecat",
        system_prompt: "",
        greeting: "Hello from Pipecat.",
        default_replica_id: "rfe12d8b9597",
        perception_model: None,
        pipeline_mode: "echo",
    },
    Persona {
        id: "pipecat-stream",
        name: "Pipecat stream",
        system_prompt: "",
        greeting: "Hello from Pipecat.",
        default_replica_id: "rfe12d8b9597",
        perception_model: None,
        pipeline_mode: "echo",
    },
];

/// The persona used when a create request names none.
pub const DEFAULT_PERSONA_ID: &str = "pdced222244b";

/// Looks up a stock replica by id.
pub fn replica(id: &str) -> Option<&'static Replica> {
    REPLICAS.iter().find(|r| r.id == id)
}

/// Looks up a stock persona by id.
pub fn persona(id: &str) -> Option<&'static Persona> {
    PERSONAS.iter().find(|p| p.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_persona_default_replica_exists() {
        for p in PERSONAS {
            assert!(replica(p.default_replica_id).is_some(), "{}", p.id);
        }
    }

    #[test]
    fn at_least_one_stock_persona_has_perception_on() {
        assert!(PERSONAS.iter().any(|p| p.perception_model.is_some()));
    }

    #[test]
    fn the_default_persona_exists() {
        assert!(persona(DEFAULT_PERSONA_ID).is_some());
    }
}
