//! Who the guest is: `hostname`, `timezone`, and `[[users]]` with their
//! SSH keys. The agent applies them at boot (see skiff_proto::guest).

use super::{expect_str, table_items, Errs, Fields};
use crate::{check_name, UserSpec};
use skiff_proto::guest::{valid_ssh_key, valid_timezone, valid_user_name};
use toml::Value;

pub(super) fn hostname(v: &Value, p: &str, errs: &mut Errs) -> Option<String> {
    let name = expect_str(v, p, errs)?;
    match check_name(name) {
        Ok(()) => Some(name.to_owned()),
        Err(e) => {
            errs.push(p, e);
            None
        }
    }
}

pub(super) fn timezone(v: &Value, p: &str, errs: &mut Errs) -> Option<String> {
    let tz = expect_str(v, p, errs)?;
    if !valid_timezone(tz) {
        errs.push(
            p,
            format!("{tz:?} is not a time zone name; write it like \"Europe/Berlin\" or \"UTC\""),
        );
        return None;
    }
    Some(tz.to_owned())
}

pub(super) fn users(v: &Value, p: &str, errs: &mut Errs) -> Vec<UserSpec> {
    let mut out: Vec<UserSpec> = Vec::new();
    for (ip, t) in table_items(v, p, "user", errs) {
        let mut f = Fields::new(t, &ip);
        let name = f.string("name", errs);
        let sudo = f.boolean("sudo", errs).unwrap_or(false);
        let mut keys = Vec::new();
        if let Some(v) = f.get("ssh_authorized_keys") {
            let kp = f.sub("ssh_authorized_keys");
            match v {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let ep = format!("{kp}[{i}]");
                        let Some(key) = expect_str(item, &ep, errs) else {
                            continue;
                        };
                        if valid_ssh_key(key) {
                            keys.push(key.to_owned());
                        } else {
                            errs.push(&ep, "not a public key line; paste one line of a .pub file, like \"ssh-ed25519 AAAA... me@host\" (no options, no line breaks)");
                        }
                    }
                }
                _ => errs.push(&kp, "expected an array of public key lines"),
            }
        }
        f.finish(&["name", "ssh_authorized_keys", "sudo"], errs);
        let Some(name) = name else {
            errs.push(&format!("{ip}.name"), "missing; the user's login name");
            continue;
        };
        if !valid_user_name(&name) || name == "root" {
            errs.push(
                &format!("{ip}.name"),
                format!("{name:?} is not a user skiff can create; use 1 to 32 of a-z, 0-9, _ and -, starting with a letter or _ (root exists already)"),
            );
            continue;
        }
        if out.iter().any(|u| u.name == name) {
            errs.push(
                &format!("{ip}.name"),
                format!("user {name:?} is listed twice"),
            );
            continue;
        }
        out.push(UserSpec {
            name,
            ssh_authorized_keys: keys,
            sudo,
        });
    }
    out
}
