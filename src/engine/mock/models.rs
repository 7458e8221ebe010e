//! `GET /v1/models` and `GET /v1/models/{id}`, for both vendors: a request from an Anthropic
//! client (it sends `anthropic-version` or `x-api-key`) gets Anthropic's list of `ModelInfo`,
//! any other OpenAI's `{"object": "list", "data": [model]}`. The mock answers any model name;
//! these lists only name the usual ones.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::routes::{Dialect, is_anthropic_client};
use super::{Shared, list_page, messages, reply};

/// OpenAI models listed, with their `created` times.
const OPENAI: &[(&str, u64)] = &[
    ("gpt-4o", 1_715_367_049),
    ("gpt-4o-mini", 1_721_172_741),
    ("gpt-4.1", 1_744_316_542),
    ("gpt-4.1-mini", 1_744_318_173),
    ("gpt-4.1-nano", 1_744_321_707),
    ("gpt-5", 1_754_425_777),
    ("gpt-5-mini", 1_754_425_928),
    ("gpt-5-nano", 1_754_426_384),
    ("o3", 1_744_225_308),
    ("o4-mini", 1_744_225_351),
];

/// Anthropic models listed: id, display name, release date.
const ANTHROPIC: &[(&str, &str, &str)] = &[
    ("claude-opus-4-5", "Claude Opus 4.5", "2025-11-24T00:00:00Z"),
    (
        "claude-sonnet-4-5",
        "Claude Sonnet 4.5",
        "2025-09-29T00:00:00Z",
    ),
    (
        "claude-haiku-4-5",
        "Claude Haiku 4.5",
        "2025-10-15T00:00:00Z",
    ),
    (
        "claude-3-5-haiku-latest",
        "Claude Haiku 3.5",
        "2024-10-22T00:00:00Z",
    ),
];

fn openai_model(id: &str, created: u64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": "openai"})
}

fn anthropic_model(id: &str, name: &str, created: &str) -> Value {
    json!({"type": "model", "id": id, "display_name": name, "created_at": created,
        "lifecycle": "active", "deprecated_at": null, "retires_at": null,
        "max_input_tokens": 200_000, "max_tokens": 64_000})
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    limit: Option<usize>,
    after_id: Option<String>,
}

/// `GET /v1/models`; Anthropic's is paged with `limit` and `after_id`.
pub(super) async fn list(
    State(_s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if !is_anthropic_client(&headers) {
        let data: Vec<Value> = OPENAI.iter().map(|(id, c)| openai_model(id, *c)).collect();
        return reply(
            StatusCode::OK,
            json!({"object": "list", "data": data}).to_string(),
        );
    }
    if let Err(e) = messages::check_key(&headers) {
        return reply(e.0, e.1);
    }
    let limit = q.limit.unwrap_or(20).clamp(1, 1000);
    let body = list_page(
        Dialect::Anthropic,
        ANTHROPIC,
        q.after_id.as_deref(),
        limit,
        |(id, ..)| id,
        |(id, name, created)| anthropic_model(id, name, created),
    );
    reply(StatusCode::OK, body.to_string())
}

/// `GET /v1/models/{id}`: a listed model, or any other name the mock would answer for (every
/// name for OpenAI, `claude-*` for Anthropic).
pub(super) async fn retrieve(
    State(_s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !is_anthropic_client(&headers) {
        let created = OPENAI
            .iter()
            .find(|(m, _)| *m == id)
            .map_or(1_700_000_000, |(_, c)| *c);
        return reply(StatusCode::OK, openai_model(&id, created).to_string());
    }
    if let Err(e) = messages::check_key(&headers) {
        return reply(e.0, e.1);
    }
    match ANTHROPIC.iter().find(|(m, ..)| *m == id) {
        Some((id, name, created)) => reply(
            StatusCode::OK,
            anthropic_model(id, name, created).to_string(),
        ),
        None if id.starts_with("claude-") => reply(
            StatusCode::OK,
            anthropic_model(&id, &id, "2025-01-01T00:00:00Z").to_string(),
        ),
        None => reply(
            StatusCode::NOT_FOUND,
            messages::error_body("not_found_error", &format!("model: {id}")),
        ),
    }
}
