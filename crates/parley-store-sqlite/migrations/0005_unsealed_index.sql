-- Conversations whose content an older parley stored in plaintext: their request_json does not
-- start with 'pe1:' (parley_store::SEALED_PREFIX). Empty once a store is sealed, so the check at
-- every start costs nothing; the queries repeat this exact expression so that they use it.
CREATE INDEX conversation_unsealed ON conversation (conversation_id)
    WHERE substr(request_json, 1, 4) <> 'pe1:';
