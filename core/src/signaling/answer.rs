//! The non-streaming answer: with `--no-trickle-ice` the gateway's answer comes back in the body of the
//! offer's own HTTP response, wrapped twice in JSON (§2.7).

use super::*;

/// The non-streaming (`--no-trickle-ice`) answer, §2.7: `response` is the parsed
/// `ControllerResponse.payload` (`{"payload": "<JSON string of {is_ok, data}>"}`).
/// `Err` carries the gateway's error text (Commander: `Gateway error: <error>`, not retried).
/// Unlike Commander, `isOk: true` without `is_ok` is honoured for the data as well.
pub fn non_streaming_answer(
    key: &TunnelKey,
    response: Option<&Value>,
) -> Result<GatewayData, String> {
    let Some(response) = response.filter(|r| truthy(Some(r))) else {
        return Ok(GatewayData::Ignored("empty controller response".into()));
    };
    let payload: Map<String, Value> = match response.get("payload") {
        Some(Value::String(s)) => match parse_json_bounded(s, "payload") {
            Ok(Value::Object(o)) => o,
            _ => Map::new(),
        },
        Some(Value::Object(o)) => o.clone(),
        _ => Map::new(),
    };
    let ok = truthy(payload.get("is_ok")) || truthy(payload.get("isOk"));
    if !ok {
        let msg = payload
            .get("error")
            .map(|e| {
                e.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string())
            })
            .unwrap_or_else(|| "Unknown error from gateway".into());
        return Err(msg);
    }
    match payload.get("data") {
        Some(Value::String(s)) if !s.is_empty() => Ok(classify_data(key, s)),
        _ => Ok(GatewayData::Ignored("gateway reply without data".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::signaling::test_support::*;

    #[test]
    fn non_streaming_double_json() {
        let key = kat_key();
        let data = encrypted(&key, &answer_data_json("v=0\r\n"));
        let reply = gateway_reply_ok(&data);
        let response: Value = serde_json::from_str(&controller_response_payload(&reply)).unwrap();
        assert_eq!(
            non_streaming_answer(&key, Some(&response)),
            Ok(GatewayData::Answer("v=0\r\n".into()))
        );
        let err: Value =
            serde_json::from_str(&controller_response_payload(&gateway_reply_error("nope")))
                .unwrap();
        assert_eq!(non_streaming_answer(&key, Some(&err)), Err("nope".into()));
        let no_error: Value = serde_json::json!({"payload": "{\"is_ok\": false}"});
        assert_eq!(
            non_streaming_answer(&key, Some(&no_error)),
            Err("Unknown error from gateway".into())
        );
        assert!(matches!(
            non_streaming_answer(&key, None),
            Ok(GatewayData::Ignored(_))
        ));
        assert!(matches!(
            non_streaming_answer(&key, Some(&serde_json::json!({}))),
            Ok(GatewayData::Ignored(_))
        ));
        assert_eq!(
            non_streaming_answer(&key, Some(&serde_json::json!({"payload": "garbage"}))),
            Err("Unknown error from gateway".into())
        );
    }
}
