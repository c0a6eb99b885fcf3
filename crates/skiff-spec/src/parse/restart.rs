//! The restart policy of a spec.

use super::{expect_int, expect_str, type_name, Errs, Fields};
use crate::{parse_duration_ms, RestartPolicy};
use toml::Value;

pub(super) fn restart(v: &Value, p: &str, errs: &mut Errs) -> RestartPolicy {
    const DEFAULT_BACKOFF_MS: u64 = 1000;
    const DEFAULT_MAX_BACKOFF_MS: u64 = 60_000;
    let (policy, table) = match v {
        Value::String(s) => (s.as_str(), None),
        Value::Table(t) => match t.get("policy") {
            Some(Value::String(s)) => (s.as_str(), Some(t)),
            Some(other) => {
                errs.push(
                    &format!("{p}.policy"),
                    format!("expected a string, found {}", type_name(other)),
                );
                return RestartPolicy::No;
            }
            None => {
                errs.push(
                    &format!("{p}.policy"),
                    "missing; allowed: \"no\", \"on-failure\", \"always\"",
                );
                return RestartPolicy::No;
            }
        },
        other => {
            errs.push(
                p,
                format!(
                    "expected a policy name or a table, found {}",
                    type_name(other)
                ),
            );
            return RestartPolicy::No;
        }
    };
    let mut backoff = DEFAULT_BACKOFF_MS;
    let mut max_backoff = DEFAULT_MAX_BACKOFF_MS;
    let mut max_retries = None;
    if let Some(t) = table {
        let mut f = Fields::new(t, p);
        f.get("policy");
        for (key, slot) in [("backoff", &mut backoff), ("max_backoff", &mut max_backoff)] {
            if let Some(v) = f.get(key) {
                let kp = f.sub(key);
                if let Some(s) = expect_str(v, &kp, errs) {
                    match parse_duration_ms(s) {
                        Ok(ms) => *slot = ms,
                        Err(e) => errs.push(&kp, e),
                    }
                }
            }
        }
        if let Some(v) = f.get("max_retries") {
            let kp = f.sub("max_retries");
            if let Some(n) = expect_int(v, &kp, errs) {
                match u32::try_from(n) {
                    Ok(n) => max_retries = Some(n),
                    Err(_) => errs.push(&kp, format!("{n} is not a valid count; use 0 or more")),
                }
            }
        }
        if policy != "on-failure" && max_retries.is_some() {
            errs.push(
                &f.sub("max_retries"),
                "only applies to policy \"on-failure\"",
            );
        }
        f.finish(&["policy", "backoff", "max_backoff", "max_retries"], errs);
    }
    if backoff > max_backoff {
        errs.push(
            &format!("{p}.backoff"),
            format!("{backoff} ms is longer than max_backoff ({max_backoff} ms)"),
        );
    }
    match policy {
        "no" => RestartPolicy::No,
        "on-failure" => RestartPolicy::OnFailure {
            max_retries,
            backoff_ms: backoff,
            max_backoff_ms: max_backoff,
        },
        "always" => RestartPolicy::Always {
            backoff_ms: backoff,
            max_backoff_ms: max_backoff,
        },
        other => {
            let pp = if table.is_some() {
                format!("{p}.policy")
            } else {
                p.to_owned()
            };
            errs.push(
                &pp,
                format!("unknown policy {other:?}; allowed: \"no\", \"on-failure\", \"always\""),
            );
            RestartPolicy::No
        }
    }
}
