//! Streamed answers (`stream: true`): the complete answer the mock would send, cut into the
//! server-sent events each API streams, so that an SDK's stream reader (and its helpers that
//! rebuild the final object from the events) gets what it gets from the real API:
//! - Chat Completions: `data: {chat.completion.chunk}` lines, the usage in a last chunk with no
//!   choices when `stream_options.include_usage` is set, then `data: [DONE]`;
//! - Responses: `response.created`, `response.in_progress`, the output items with their text or
//!   arguments deltas, then `response.completed` (or `response.incomplete`) with the response;
//! - Messages: `message_start`, the content blocks with their deltas, `message_delta` with the
//!   stop reason and usage, then `message_stop`.
//!
//! Text goes out a word at a time (a word with the spaces before it).

use serde_json::{Map, Value, json};

/// One `data:` event, with its `event:` name when given.
fn event(out: &mut String, name: Option<&str>, data: &Value) {
    if let Some(name) = name {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&data.to_string());
    out.push_str("\n\n");
}

/// `text` in pieces that join back to it: each word with the whitespace before it.
pub(super) fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut prev_space = true;
    for (i, c) in text.char_indices() {
        let space = c.is_whitespace();
        if space && !prev_space && i > start {
            out.push(&text[start..i]);
            start = i;
        }
        prev_space = space;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// `base` with `fields` added (or replaced).
fn with(base: &Value, fields: Value) -> Value {
    let mut v = base.clone();
    if let (Some(o), Value::Object(f)) = (v.as_object_mut(), fields) {
        o.extend(f);
    }
    v
}

/// The elements of `v` when it is an array; none when it is not.
fn items(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// Chat Completions chunks for the `chat.completion` `done`.
pub(super) fn chat(done: &Value, include_usage: bool) -> String {
    let mut base = json!({
        "id": done["id"],
        "object": "chat.completion.chunk",
        "created": done["created"],
        "model": done["model"],
        "service_tier": done["service_tier"],
        "system_fingerprint": done["system_fingerprint"],
    });
    if include_usage {
        base["usage"] = Value::Null;
    }
    let chunk = |choice: Value| with(&base, json!({"choices": [choice]}));
    let mut out = String::new();
    for choice in items(&done["choices"]) {
        let index = &choice["index"];
        let message = &choice["message"];
        let delta = |d: Value| {
            json!({"index": index, "delta": d, "logprobs": null,
            "finish_reason": null})
        };
        match message["tool_calls"].as_array() {
            Some(calls) => {
                event(
                    &mut out,
                    None,
                    &chunk(delta(json!({"role": "assistant", "content": null,
                        "refusal": null}))),
                );
                for (k, call) in calls.iter().enumerate() {
                    let f = &call["function"];
                    event(
                        &mut out,
                        None,
                        &chunk(delta(json!({"tool_calls": [{"index": k, "id": call["id"],
                            "type": "function",
                            "function": {"name": f["name"], "arguments": ""}}]}))),
                    );
                    for p in pieces(f["arguments"].as_str().unwrap_or_default()) {
                        event(
                            &mut out,
                            None,
                            &chunk(delta(json!({"tool_calls": [{"index": k,
                                "function": {"arguments": p}}]}))),
                        );
                    }
                }
            }
            None => {
                event(
                    &mut out,
                    None,
                    &chunk(delta(
                        json!({"role": "assistant", "content": "", "refusal": null}),
                    )),
                );
                for p in pieces(message["content"].as_str().unwrap_or_default()) {
                    event(&mut out, None, &chunk(delta(json!({"content": p}))));
                }
            }
        }
        event(
            &mut out,
            None,
            &chunk(json!({"index": index, "delta": {}, "logprobs": null,
                "finish_reason": choice["finish_reason"]})),
        );
    }
    if include_usage {
        event(
            &mut out,
            None,
            &with(&base, json!({"choices": [], "usage": done["usage"]})),
        );
    }
    out.push_str("data: [DONE]\n\n");
    out
}

/// The events of one Responses stream, numbered in order (`sequence_number`) as they are sent.
struct Sequence {
    out: String,
    seq: u64,
}

impl Sequence {
    /// Sends the event `kind` with `fields` beside its type and number.
    fn emit(&mut self, kind: &str, fields: Value) {
        let v = with(&json!({"type": kind, "sequence_number": self.seq}), fields);
        event(&mut self.out, Some(kind), &v);
        self.seq += 1;
    }
}

/// Responses API events for the `response` `done`.
pub(super) fn responses(done: &Value) -> String {
    let mut events = Sequence {
        out: String::new(),
        seq: 0,
    };
    let started = with(
        done,
        json!({"status": "in_progress", "output": [], "usage": null,
            "incomplete_details": null}),
    );
    events.emit("response.created", json!({"response": started.clone()}));
    events.emit("response.in_progress", json!({"response": started}));
    for (i, item) in items(&done["output"]).iter().enumerate() {
        output_item(&mut events, i, item);
    }
    let last = if done["status"] == "incomplete" {
        "response.incomplete"
    } else {
        "response.completed"
    };
    events.emit(last, json!({"response": done}));
    events.out
}

/// The events of output item `i`: added (empty), its text or arguments deltas, done.
fn output_item(events: &mut Sequence, i: usize, item: &Value) {
    let kind = item["type"].as_str().unwrap_or_default();
    let added = match kind {
        "message" => with(item, json!({"status": "in_progress", "content": []})),
        "function_call" => with(item, json!({"status": "in_progress", "arguments": ""})),
        _ => item.clone(),
    };
    events.emit(
        "response.output_item.added",
        json!({"output_index": i, "item": added}),
    );
    match kind {
        "message" => {
            for (j, part) in items(&item["content"]).iter().enumerate() {
                content_part(events, i, item, j, part);
            }
        }
        "function_call" => function_call_arguments(events, i, item),
        _ => {}
    }
    events.emit(
        "response.output_item.done",
        json!({"output_index": i, "item": item}),
    );
}

/// The events of content part `j` of message item `i`: the part added (empty), its text a
/// piece at a time, the text done, the part done.
fn content_part(events: &mut Sequence, i: usize, item: &Value, j: usize, part: &Value) {
    let at = json!({"item_id": item["id"], "output_index": i, "content_index": j});
    let text = part["text"].as_str().unwrap_or_default();
    events.emit(
        "response.content_part.added",
        with(
            &at,
            json!({"part": {"type": "output_text", "text": "",
                "annotations": [], "logprobs": []}}),
        ),
    );
    for p in pieces(text) {
        events.emit(
            "response.output_text.delta",
            with(&at, json!({"delta": p, "logprobs": []})),
        );
    }
    events.emit(
        "response.output_text.done",
        with(&at, json!({"text": text, "logprobs": []})),
    );
    events.emit(
        "response.content_part.done",
        with(&at, json!({"part": part})),
    );
}

/// The events of function call item `i`: its arguments a piece at a time, then whole.
fn function_call_arguments(events: &mut Sequence, i: usize, item: &Value) {
    let arguments = item["arguments"].as_str().unwrap_or_default();
    let at = json!({"item_id": item["id"], "output_index": i});
    for p in pieces(arguments) {
        events.emit(
            "response.function_call_arguments.delta",
            with(&at, json!({"delta": p})),
        );
    }
    events.emit(
        "response.function_call_arguments.done",
        with(&at, json!({"arguments": arguments, "name": item["name"]})),
    );
}

/// Messages API events for the `message` `done`.
pub(super) fn messages(done: &Value) -> String {
    let mut out = String::new();
    let mut emit = |name: &str, fields: Value| {
        event(&mut out, Some(name), &with(&json!({"type": name}), fields));
    };
    let mut usage = done["usage"].clone();
    let output_tokens = usage["output_tokens"].clone();
    usage["output_tokens"] = json!(1);
    let start = with(
        done,
        json!({"content": [], "stop_reason": null, "stop_sequence": null, "usage": usage}),
    );
    emit("message_start", json!({"message": start}));
    for (i, block) in items(&done["content"]).iter().enumerate() {
        match block["type"].as_str() {
            Some("tool_use") => {
                let started = with(block, json!({"input": {}}));
                emit(
                    "content_block_start",
                    json!({"index": i, "content_block": started}),
                );
                let input = block["input"].to_string();
                for p in pieces(&input) {
                    emit(
                        "content_block_delta",
                        json!({"index": i, "delta": {"type": "input_json_delta",
                            "partial_json": p}}),
                    );
                }
            }
            _ => {
                emit(
                    "content_block_start",
                    json!({"index": i, "content_block": {"type": "text", "text": ""}}),
                );
                if i == 0 {
                    emit("ping", json!({}));
                }
                for p in pieces(block["text"].as_str().unwrap_or_default()) {
                    emit(
                        "content_block_delta",
                        json!({"index": i, "delta": {"type": "text_delta", "text": p}}),
                    );
                }
            }
        }
        emit("content_block_stop", json!({"index": i}));
    }
    let mut final_usage = Map::new();
    final_usage.insert("output_tokens".into(), output_tokens);
    for k in [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ] {
        final_usage.insert(k.into(), done["usage"][k].clone());
    }
    emit(
        "message_delta",
        json!({"delta": {"stop_reason": done["stop_reason"],
            "stop_sequence": done["stop_sequence"]}, "usage": final_usage}),
    );
    emit("message_stop", json!({}));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `data:` payloads of an event stream, with their event names.
    fn events(sse: &str) -> Vec<(Option<String>, String)> {
        sse.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let mut name = None;
                let mut data = String::new();
                for line in e.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = Some(n.to_string());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = d.to_string();
                    }
                }
                (name, data)
            })
            .collect()
    }

    #[test]
    fn pieces_join_back_to_the_text() {
        for text in [
            "",
            "one",
            "mock answer to \"hi\"",
            "  lead  and\ntrail ",
            "é ü",
        ] {
            assert_eq!(pieces(text).concat(), text);
        }
        assert_eq!(pieces("a bc  d"), ["a", " bc", "  d"]);
    }

    #[test]
    fn chat_chunks_rebuild_the_answer_then_send_usage_and_done() {
        let done = json!({"id": "c1", "created": 1, "model": "m", "service_tier": "default",
            "system_fingerprint": "fp", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "a b c"},
                    "finish_reason": "stop"},
                {"index": 1, "message": {"role": "assistant", "content": "a b c"},
                    "finish_reason": "stop"}],
            "usage": {"total_tokens": 3}});
        let sse = chat(&done, true);
        let evs = events(&sse);
        assert_eq!(evs.last().unwrap().1, "[DONE]");
        let chunks: Vec<Value> = evs[..evs.len() - 1]
            .iter()
            .map(|(_, d)| serde_json::from_str(d).unwrap())
            .collect();
        for i in 0..2 {
            let text: String = chunks
                .iter()
                .filter_map(|c| c["choices"].get(0))
                .filter(|c| c["index"] == i)
                .filter_map(|c| c["delta"]["content"].as_str())
                .collect();
            assert_eq!(text, "a b c");
        }
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk")
        );
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["total_tokens"], 3);
    }

    #[test]
    fn responses_events_are_numbered_and_end_with_the_response() {
        let done = json!({"id": "r1", "object": "response", "status": "completed",
            "output": [{"id": "m1", "type": "message", "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "x y", "annotations": []}]}]});
        let evs = events(&responses(&done));
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
        assert_eq!(names[0], "response.created");
        assert_eq!(*names.last().unwrap(), "response.completed");
        let datas: Vec<Value> = evs
            .iter()
            .map(|(_, d)| serde_json::from_str(d).unwrap())
            .collect();
        for (k, d) in datas.iter().enumerate() {
            assert_eq!(d["sequence_number"], k as u64);
            assert_eq!(d["type"], names[k]);
        }
        let text: String = datas
            .iter()
            .filter(|d| d["type"] == "response.output_text.delta")
            .map(|d| d["delta"].as_str().unwrap())
            .collect();
        assert_eq!(text, "x y");
        assert_eq!(datas.last().unwrap()["response"], done);
    }

    #[test]
    fn message_events_carry_the_tool_input_as_json_deltas() {
        let done = json!({"id": "msg1", "type": "message", "role": "assistant", "model": "c",
            "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": [1, 2]}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 5, "output_tokens": 7}});
        let evs = events(&messages(&done));
        let datas: Vec<Value> = evs
            .iter()
            .map(|(_, d)| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(datas[0]["type"], "message_start");
        assert_eq!(datas[0]["message"]["content"], json!([]));
        let input: String = datas
            .iter()
            .filter(|d| d["type"] == "content_block_delta")
            .map(|d| d["delta"]["partial_json"].as_str().unwrap())
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&input).unwrap(),
            json!({"a": [1, 2]})
        );
        let delta = datas.iter().find(|d| d["type"] == "message_delta").unwrap();
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
        assert_eq!(delta["usage"]["output_tokens"], 7);
        assert_eq!(datas.last().unwrap()["type"], "message_stop");
    }
}
